"""flux-lora-perf: a performance regression gate for fast LoRA hot-swap inference on FLUX.1-dev.

Data flows one way: options -> profile / model source / LoRA pool / recipe -> ``build_pipeline``
-> scenario -> record -> checks, baselines, report.
"""
