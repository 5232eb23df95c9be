"""The probe behind ``text-encode-vae.json`` (issue 25, lead 5): FLUX.1-dev's text encoders and VAE decoder at full
size (seeded random weights, bf16) on one GPU, eager against ``torch.compile`` (default and reduce-overhead).
Run from the repository root: ``python docs/results/2026-11-30-h200/text_encode_probe.py`` (writes $OUT or /tmp)."""

import json
import os
import statistics
import time

import torch

from perf.spec.models import build_synthetic_pipeline

PROMPT = "a photo of a cat wearing a tiny wizard hat, studio lighting, 35mm, highly detailed"


def median_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    out = os.path.join(os.environ.get("OUT", "/tmp"), "te_probe.json")
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
    start = time.perf_counter()
    pipe = build_synthetic_pipeline("full", torch.bfloat16, "cuda")
    result["build_s"] = time.perf_counter() - start
    t5, clip = pipe.text_encoder_2, pipe.text_encoder
    ids_t5 = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=512, truncation=True,
                              return_tensors="pt").input_ids.cuda()
    ids_clip = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids.cuda()

    def encode() -> object:
        return pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)

    with torch.inference_mode():
        latents = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
        result["eager"] = {
            "encode_prompt_ms": median_ms(encode), "t5_ms": median_ms(lambda: t5(ids_t5)),
            "clip_ms": median_ms(lambda: clip(ids_clip)),
            "tokenize_ms": median_ms(lambda: pipe.tokenizer_2(PROMPT, padding="max_length", max_length=512,
                                                              truncation=True, return_tensors="pt")),
            "vae_decode_ms": median_ms(lambda: pipe.vae.decode(latents, return_dict=False), 5),
        }
        for mode in ("default", "reduce-overhead"):
            torch.compiler.reset()
            pipe.text_encoder_2 = torch.compile(t5, mode=mode, fullgraph=True)
            pipe.text_encoder = torch.compile(clip, mode=mode, fullgraph=True)
            start = time.perf_counter()
            encode()
            torch.cuda.synchronize()
            result[mode] = {"compile_s": time.perf_counter() - start, "encode_prompt_ms": median_ms(encode),
                            "t5_ms": median_ms(lambda: pipe.text_encoder_2(ids_t5))}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
