"""`monkey-trt eval`: the paper's automated evaluation (CLIP-T, CLIP-I, DINO) over a subject folder,
20 prompts, seeds, methods (MONKEY, plain IP-Adapter at given scales) and engine precisions.

Modules, one job each:
  prompts     the paper's 20 location/background prompts, prompt files, subject word -> prompt
  subjects    the subject folder (images, sidecar words), decoded and hashed up front
  methods     --methods / --precision parsing and checks
  judges      the CLIP and DINO judges: loading (hub id or folder), preprocessing, batched embeddings
  tiny_judges tiny random CLIP and DINO models in their hub layouts (offline tests)
  metrics     cosines, mask IoU, PSNR, mean and 95% CI, paired deltas
  store       the --out folder: record, rows.csv (atomic), tagged images, resume, the no-overwrite rule
  generation  one backend at one precision: MONKEY or plain IP-Adapter from a fixed noise plan
  protocol    the run: plan, skip what is done, generate, score in batches, write rows
  report      summary per method x precision, the paper's Table 1 beside it, verdicts, files
  plots       CLIP-T vs CLIP-I scatter with the Pareto front (PIL)
  contact     the HTML contact sheet
  progress    progress with an ETA
  command     the `eval` command's options -> job, run, printed summary
"""
