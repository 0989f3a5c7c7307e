"""Server-side validation of raw request values (Gradio bounds only hold in the browser)."""

import math

import pytest

from pipelines.errors import ParamError
from pipelines.requests import SAMPLER_NAMES, SEED_MAX, validate_size, Txt2Img


def code_of(**kwargs):
    with pytest.raises(ParamError) as info:
        Txt2Img.from_fields(**{"prompt": "一只猫", **kwargs})
    return info.value.code


def test_valid_request_gets_a_concrete_seed():
    p = Txt2Img.from_fields(prompt="一只猫", seed=-1, width=512.0, num_inference_steps="20")
    assert 0 <= p.seed <= SEED_MAX
    assert p.width == 512 and p.num_inference_steps == 20


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"width": 513}, "size_not_multiple_of_8"),
        ({"width": 10**9}, "out_of_range"),
        ({"height": 32}, "out_of_range"),
        ({"num_inference_steps": math.nan}, "not_an_integer"),
        ({"num_inference_steps": 2.5}, "not_an_integer"),
        ({"guidance_scale": math.inf}, "not_a_number"),
        ({"guidance_scale": "abc"}, "not_a_number"),
        ({"seed": 2**64}, "out_of_range"),
        ({"seed": "abc"}, "not_an_integer"),
        ({"seed": True}, "not_an_integer"),
        ({"prompt": "   "}, "empty_prompt"),
        ({"prompt": "猫" * 100_000}, "text_too_long"),
        ({"sampler": "Euler z"}, "unknown_sampler"),
        ({"num_images_per_prompt": 0}, "out_of_range"),
        ({"width": 2048, "height": 2048, "num_images_per_prompt": 2}, "job_too_large"),
    ],
)
def test_bad_values_are_refused_with_a_code(kwargs, code):
    assert code_of(**kwargs) == code


def test_size_checks_multiple_of_8():
    assert validate_size(520, 768) == (520, 768)
    with pytest.raises(ParamError):
        validate_size(500, 768)


def test_sampler_lists_agree():
    from pipelines.tasks.schedulers import SAMPLERS

    assert tuple(SAMPLERS) == SAMPLER_NAMES
