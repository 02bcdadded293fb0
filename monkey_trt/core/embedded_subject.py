"""The embedded subject: a synthetic 256x256 picture drawn with PIL (the demo's subject and calibration's default)."""

from __future__ import annotations


def draw_subject(size: int = 256):
    """A deterministic toy-like subject (a teddy bear with a blue bow) on a plain background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 256), (226, 232, 240))
    d = ImageDraw.Draw(img)
    fur, light, dark = (176, 112, 58), (226, 180, 130), (40, 28, 22)
    d.ellipse((70, 206, 186, 226), fill=(200, 206, 214))  # shadow
    d.ellipse((78, 112, 178, 214), fill=fur)  # body
    d.ellipse((103, 140, 153, 200), fill=light)  # belly
    d.ellipse((56, 124, 92, 168), fill=fur)  # arms
    d.ellipse((164, 124, 200, 168), fill=fur)
    d.ellipse((80, 188, 118, 222), fill=fur)  # feet
    d.ellipse((138, 188, 176, 222), fill=fur)
    d.ellipse((78, 30, 114, 66), fill=fur)  # ears
    d.ellipse((142, 30, 178, 66), fill=fur)
    d.ellipse((88, 40, 104, 56), fill=light)
    d.ellipse((152, 40, 168, 56), fill=light)
    d.ellipse((84, 38, 172, 122), fill=fur)  # head
    d.ellipse((110, 82, 146, 112), fill=light)  # muzzle
    d.ellipse((106, 64, 116, 76), fill=dark)  # eyes
    d.ellipse((140, 64, 150, 76), fill=dark)
    d.ellipse((121, 84, 135, 94), fill=dark)  # nose
    d.polygon([(128, 124), (104, 112), (104, 136)], fill=(40, 90, 200))  # bow
    d.polygon([(128, 124), (152, 112), (152, 136)], fill=(40, 90, 200))
    d.ellipse((122, 118, 134, 130), fill=(30, 70, 170))
    return img if size == 256 else img.resize((size, size), Image.Resampling.BICUBIC)
