"""The rows that compile the VAE decoder (``compile_vae``: the fast GPU rows) compile it again for every new image
shape, by rules of its own: on the H200 ``optimized_fast_cudagraphs`` measured 2 graphs for batches where the
documented count is 1. The serving scenarios count the decoder's graphs apart, so the transformer's count stays the
one documented, and the finding says what the decoder compiled."""

import dataclasses
import json

import pytest
from fake_records import example_record

from perf.build.builder import build_pipeline
from perf.judge.record import from_json, to_json
from perf.judge.serving_record import Request, ServingResult
from perf.report.report import serving_table
from perf.run import serving
from perf.spec.recipes import get_recipe


@pytest.fixture(scope="module")
def with_compiled_decoder(tiny_spec):
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), name="no_fa3_fp8_vae", compile_vae=True)
    built = build_pipeline(tiny_spec, recipe)
    built.generate()  # the case's warm-up: the scenario starts from graphs for the default request
    return built


def test_batches_count_the_decoders_graphs_apart_from_the_transformers(with_compiled_decoder):
    result = serving.run_batches(with_compiled_decoder)
    assert result.decoder_recompiles == 1  # measured on the CPU and on the H200: batch 2 makes its batch dynamic
    assert result.transformer_recompiles == result.expected_recompiles == serving.KNOWN_RECOMPILES["batches"].count
    assert result.steady_recompiles == 0
    assert "the compiled VAE decoder compiled 1 graph(s) more" in result.finding


def test_records_before_the_decoder_count_read_as_none_of_it_and_the_table_names_it_where_counted():
    data = json.loads(to_json(example_record("optimized_fast", serving={"batches": BATCHES})))
    for request in data["serving"]["batches"]["requests"]:
        del request["first_decoder_graphs"]
    old = from_json(json.dumps(data)).serving["batches"]
    assert (old.decoder_recompiles, old.transformer_recompiles) == (0, 2)
    assert "| batch 2 | 9.000 | 2 |" in serving_table([example_record("optimized_fast", serving={"batches": old})],
                                                      "h100")
    assert "| batch 2 | 9.000 | 2 (1 VAE) |" in serving_table([example_record("optimized_fast",
                                                                                serving={"batches": BATCHES})], "h100")


BATCHES = ServingResult("batches", (Request("batch 1", 2.0, 0, 1.0, 0, 1), Request("batch 2", 9.0, 2, 3.0, 0, 2,
                                                                                   first_decoder_graphs=1)),
                        expected_recompiles=1)
