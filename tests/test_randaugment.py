import glob
import math
import random

import numpy as np
import pytest
from conftest import HYMENOPTERA
from PIL import Image, ImageOps
from timm.data import auto_augment as aa
from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS

from etpp_dali.ops.randaugment import (
    COLOUR,
    FILL,
    GEOMETRIC,
    NUM_ARGS,
    OPS,
    OPS_PER_IMAGE,
    apply_colour_ops_pil,
    colour_branches,
    lut,
    lut_expression,
    sample_randaugment,
)

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def  # noqa: E402

from etpp_dali.ops.dali_ops import apply_colour_ops, apply_randaugment  # noqa: E402

NAMES = [op.name for op in OPS]
LUT_OPS = ("Invert", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd")
LEVELS = np.linspace(0.0, 1.0, 21)


def code(name):
    return NAMES.index(name) + 1


def args(name, level, sign=1.0, size=(224, 224)):
    return OPS[NAMES.index(name)].arg(level, sign, size)


# ------------------------------------------------------------------------ table and draws
def test_op_table_is_timms_increasing_set():
    assert NAMES == list(_RAND_INCREASING_TRANSFORMS)
    assert set(GEOMETRIC) == {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
    assert set(GEOMETRIC) | set(COLOUR) == set(NAMES) and not set(GEOMETRIC) & set(COLOUR)
    for op in OPS:
        assert (op.pil is None) == (op.dali is None) == op.geometric, op.name
    # the four look-up-table ops share one GPU branch; every other colour op has its own
    branches = colour_branches()
    assert len(branches) == len(COLOUR) - 3
    assert dict((e, codes) for e, codes in branches)[lut_expression] == [code(n) for n in
                                                                         ("Invert", "PosterizeIncreasing",
                                                                          "SolarizeIncreasing", "SolarizeAdd")]


def test_sampling_statistics_follow_timm():
    rng = np.random.default_rng(0)
    n = 20000
    p = sample_randaugment(rng, np.full(n, 9.0), (224, 224))
    # each of 2 slots applied w.p. 0.5 and geometric w.p. 5/15: P(any geometric) = 1 - (5/6)^2
    assert p.geometric.mean() == pytest.approx(1 - (5 / 6) ** 2, abs=0.015)
    colour_slots = (p.colour > 0).sum(axis=1)
    assert colour_slots.mean() == pytest.approx(2 * 0.5 * 10 / 15, abs=0.02)
    assert set(np.unique(p.colour)) == {0} | {code(name) for name in COLOUR}
    assert p.value.shape == (n, OPS_PER_IMAGE, NUM_ARGS)
    # slots fill from the first: an empty first slot means no colour op at all
    assert not ((p.colour[:, 0] == 0) & (p.colour[:, 1] > 0)).any()
    q = sample_randaugment(np.random.default_rng(0), np.full(n, 9.0), (224, 224))
    assert np.array_equal(p.colour, q.colour) and np.array_equal(p.value, q.value)
    assert np.array_equal(p.matrix, q.matrix)
    off = sample_randaugment(rng, np.full(5, 9.0), (224, 224), enabled=False)
    assert not off.geometric.any() and not off.colour.any()


def test_generator_call_order_is_fixed():
    """A resumed run replays the same draws only if the generator is called in the same order:
    op indices, applied flags, magnitudes, signs (and nothing when disabled)."""
    n, m = 7, np.full(7, 5.0)
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    p = sample_randaugment(rng, m, (32, 32))
    ops = twin.integers(0, len(OPS), size=(n, 2))
    applied = twin.random((n, 2)) < 0.5
    twin.normal(m[:, None], 0.5, size=(n, 2))
    twin.random((n, 2))
    assert rng.random() == twin.random()
    drawn = [[code(NAMES[ops[i, k]]) for k in range(2) if applied[i, k] and NAMES[ops[i, k]] in COLOUR]
             for i in range(n)]
    assert [[c for c in row if c] for row in p.colour.tolist()] == drawn
    state = rng.bit_generator.state
    sample_randaugment(rng, m, (32, 32), enabled=False)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("level", [0.0, 0.35, 0.5, 0.77, 1.0])
def test_arguments_match_timm_level_to_arg(level, monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.0)  # timm's _randomly_negate: keep the sign
    m = level * 10

    def timm_arg(name):
        return aa.LEVEL_TO_ARG[name](m, {"translate_pct": 0.45})[0]

    for name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        assert args(name, level)[0] == pytest.approx(timm_arg(name))
        assert args(name, level, -1.0)[0] == pytest.approx(2.0 - timm_arg(name))
    bits = timm_arg("PosterizeIncreasing")
    assert args("PosterizeIncreasing", level)[0] == (0xFF << (8 - bits)) & 0xFF
    assert args("SolarizeIncreasing", level)[1] == timm_arg("SolarizeIncreasing")
    assert args("SolarizeAdd", level)[2] == timm_arg("SolarizeAdd")
    rotate = args("Rotate", level)
    assert math.degrees(math.atan2(rotate[1, 0], rotate[0, 0])) == pytest.approx(timm_arg("Rotate"))
    assert args("ShearX", level)[0, 1] == pytest.approx(timm_arg("ShearX"))
    assert args("ShearY", level)[1, 0] == pytest.approx(timm_arg("ShearY"))
    assert args("TranslateXRel", level, size=(100, 200))[0, 2] == pytest.approx(timm_arg("TranslateXRel") * 200)
    assert args("TranslateYRel", level, size=(100, 200))[1, 2] == pytest.approx(timm_arg("TranslateYRel") * 100)


def timm_lut_op(name, level):
    """timm's own op (Pillow) at ``level``, or None where Pillow 13 refuses (posterize to 0 bits)."""
    m = level * 10
    arg = aa.LEVEL_TO_ARG[name](m, {})[0] if aa.LEVEL_TO_ARG[name] else None
    if name == "PosterizeIncreasing" and arg == 0:
        return None
    return {"Invert": lambda im: aa.invert(im), "PosterizeIncreasing": lambda im: aa.posterize(im, arg),
            "SolarizeIncreasing": lambda im: aa.solarize(im, arg),
            "SolarizeAdd": lambda im: aa.solarize_add(im, arg)}[name]


ALL_VALUES = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)


@pytest.mark.parametrize("name", LUT_OPS)
def test_lut_equals_timms_pillow_op_on_all_256_values(name):
    for level in LEVELS:
        table = lut(*args(name, level))
        assert table.min() >= 0 and table.max() <= 255  # the uint8 expression never wraps
        ours = np.asarray(apply_colour_ops_pil(ALL_VALUES, [code(name), 0], np.array([args(name, level), [0] * 3])))
        assert np.array_equal(ours, table[ALL_VALUES]), (name, level)
        timm_op = timm_lut_op(name, level)
        if timm_op is None:
            assert not table.any()  # 0 bits kept: black, as Pillow 12
        else:
            assert np.array_equal(np.asarray(timm_op(Image.fromarray(ALL_VALUES))), table[ALL_VALUES]), (name, level)


def source(batch):
    return lambda: list(batch)


def run_graph(graph, images, *feeds):
    n = len(images)

    @pipeline_def(batch_size=n, num_threads=2, device_id=None, enable_conditionals=True)
    def pipe():
        x = fn.external_source(source=source(images), batch=True, layout="HWC")
        return graph(x, *[fn.external_source(source=source(f), batch=True) for f in feeds])

    p = pipe()
    p.build()
    (out,) = p.run()
    return [np.array(out[i]) for i in range(n)]


def test_lut_expression_equals_lut_on_all_256_values():
    """The GPU graph's one expression for the four ops, run by DALI on CPU data: every value,
    every op, 21 levels, one sample each."""
    cases = [(name, level) for name in LUT_OPS for level in LEVELS]
    params = np.array([args(name, level) for name, level in cases], np.float32)
    out = run_graph(lut_expression, [ALL_VALUES] * len(cases), params)
    for (name, level), p, got in zip(cases, params, out):
        assert got.dtype == np.uint8 and np.array_equal(got, lut(*p)[ALL_VALUES]), (name, level)


# ---------------------------------------------------------------------- the DALI graphs
def photos(n=6, side=96):
    files = sorted(glob.glob(str(HYMENOPTERA / "train" / "*" / "*.jpg")))[:n]
    if not files:
        pytest.skip("hymenoptera photos are not here")
    return [np.asarray(Image.open(f).convert("RGB").resize((side, side))) for f in files]


def run_randaugment(images, matrix, geometric, colour, value, dali_colour=False):
    """The CPU graph; ``dali_colour`` runs the colour ops as the GPU graph does (DALI operators)."""
    side = images[0].shape[:2]
    if dali_colour:
        return run_graph(apply_colour_ops, images, colour, value)
    return run_graph(lambda x, m, g, c, v: apply_randaugment(x, m, g, c, v, side), images, matrix, geometric,
                     colour, value)


def run_colour(images, slots, dali_colour):
    """``slots``: up to two (name, level, sign), the same for every image."""
    n = len(images)
    colour = np.zeros((n, OPS_PER_IMAGE), np.int32)
    value = np.zeros((n, OPS_PER_IMAGE, NUM_ARGS), np.float32)
    for k, (name, level, sign) in enumerate(slots):
        a = args(name, level, sign)
        colour[:, k], value[:, k, :len(a)] = code(name), a
    return run_randaugment(images, np.zeros((n, 2, 3), np.float32), np.zeros(n, bool), colour, value, dali_colour)


PIL_OPS = {
    "AutoContrast": lambda aa, im, lv: aa.auto_contrast(im),
    "Invert": lambda aa, im, lv: aa.invert(im),
    "PosterizeIncreasing": lambda aa, im, lv: aa.posterize(im, 4 - int(lv * 4)),
    "SolarizeIncreasing": lambda aa, im, lv: aa.solarize(im, 256 - int(lv * 256)),
    "SolarizeAdd": lambda aa, im, lv: aa.solarize_add(im, int(lv * 110)),
    "ColorIncreasing": lambda aa, im, lv: aa.color(im, 1 + 0.9 * lv),
    "ContrastIncreasing": lambda aa, im, lv: aa.contrast(im, 1 - 0.9 * lv),
    "BrightnessIncreasing": lambda aa, im, lv: aa.brightness(im, 1 + 0.9 * lv),
    "SharpnessIncreasing": lambda aa, im, lv: aa.sharpness(im, 1 + 0.9 * lv),
}


@pytest.mark.parametrize("dali_colour", [False, True], ids=["cpu-pillow", "gpu-graph-dali-ops"])
@pytest.mark.parametrize("op", sorted(PIL_OPS))
def test_colour_op_matches_timm_pil(op, dali_colour):
    images = photos()
    lv = 0.7
    sign = -1.0 if op == "ContrastIncreasing" else 1.0
    out = run_colour(images, [(op, lv, sign)], dali_colour)
    for im, got in zip(images, out):
        ref = np.asarray(PIL_OPS[op](aa, Image.fromarray(im), lv)).astype(int)
        diff = np.abs(got.astype(int) - ref)
        if not dali_colour:
            assert diff.max() == 0, op  # Pillow itself: exact
        else:
            if op == "SharpnessIncreasing":
                diff = diff[1:-1, 1:-1]  # PIL keeps the 1-px border; DALI filters it (reflected)
            assert diff.max() <= 2, (op, diff.max())


def opencv_equalize(image):
    """OpenCV's equalizeHist per channel (DALI's formula): v -> round(255 (cdf(v) - n_min) /
    (N - n_min)), n_min the count of the lowest level. PIL's differs by one bin: it maps v by
    the count *below* v, so a large peak lands far apart in the two."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        lowest = hist[np.flatnonzero(hist)[0]]
        table = np.rint((np.cumsum(hist) - lowest) * 255.0 / max(channel.size - lowest, 1))
        out[..., c] = np.clip(table, 0, 255).astype(np.uint8)[channel]
    return out


@pytest.mark.parametrize("dali_colour", [False, True], ids=["cpu-pillow", "gpu-graph-dali-ops"])
def test_equalize_spreads_a_low_contrast_image(dali_colour):
    """Photos squeezed into 96..159, which equalizing changes strongly: the CPU path equals
    PIL's equalize, the DALI path OpenCV's formula; an op that did nothing would fail both."""
    images = [(im // 4 + 96).astype(np.uint8) for im in photos()]
    out = run_colour(images, [("Equalize", 0.5, 1.0)], dali_colour)
    for im, got in zip(images, out):
        ref = opencv_equalize(im) if dali_colour else np.asarray(ImageOps.equalize(Image.fromarray(im)))
        assert np.abs(im.astype(int) - ref).mean() > 30  # the check below has room to fail
        assert np.abs(got.astype(int) - ref).max() <= (1 if dali_colour else 0)


@pytest.mark.parametrize("dali_colour", [False, True], ids=["cpu-pillow", "gpu-graph-dali-ops"])
def test_two_colour_ops_apply_in_order_and_untouched_samples_pass(dali_colour):
    images = photos(3)
    n = len(images)
    colour = np.zeros((n, 2), np.int32)
    value = np.zeros((n, 2, NUM_ARGS), np.float32)
    colour[:2, 0], colour[:2, 1] = code("Invert"), code("PosterizeIncreasing")
    value[:2, 0], value[:2, 1] = args("Invert", 0.0), args("PosterizeIncreasing", 0.5)  # 2 bits kept
    out = run_randaugment(images, np.zeros((n, 2, 3), np.float32), np.zeros(n, bool), colour, value, dali_colour)
    for im, got in zip(images[:2], out[:2]):
        assert np.array_equal(got, (255 - im) & 0b11000000)
    assert np.array_equal(out[2], images[2])  # drew no colour op


@pytest.mark.parametrize("dali_colour", [False, True], ids=["cpu-pillow", "gpu-graph-dali-ops"])
def test_different_ops_per_sample_and_slot(dali_colour):
    """Each sample takes its own branch in each slot (the GPU graph splits the batch per slot)."""
    images = photos(4)
    slots = [[("SolarizeAdd", 0.6, 1.0), ("AutoContrast", 0.0, 1.0)], [("BrightnessIncreasing", 0.5, -1.0)],
             [("AutoContrast", 0.0, 1.0), ("SolarizeAdd", 0.6, 1.0)], []]
    n = len(images)
    colour = np.zeros((n, 2), np.int32)
    value = np.zeros((n, 2, NUM_ARGS), np.float32)
    for i, sample in enumerate(slots):
        for k, (name, level, sign) in enumerate(sample):
            a = args(name, level, sign)
            colour[i, k], value[i, k, :len(a)] = code(name), a
    out = run_randaugment(images, np.zeros((n, 2, 3), np.float32), np.zeros(n, bool), colour, value, dali_colour)
    for i, got in enumerate(out):
        expected = apply_colour_ops_pil(images[i], colour[i], value[i])
        tolerance = 2 if dali_colour else 0
        assert np.abs(got.astype(int) - expected).max() <= tolerance, i
    assert not np.array_equal(out[0], out[2])  # the order of the two slots matters
    assert np.array_equal(out[3], images[3])


@pytest.mark.parametrize("op,level,sign", [("Rotate", 0.7, 1.0), ("ShearX", 0.7, -1.0), ("ShearY", 0.5, 1.0),
                                           ("TranslateXRel", 0.5, 1.0), ("TranslateYRel", 0.5, -1.0)])
def test_geometric_op_matches_timm_pil_bicubic(op, level, sign):
    images = photos(3, side=224)  # the boundary band is a small share at a realistic size
    n = len(images)
    matrix = args(op, level, sign, images[0].shape[:2])[:2].astype(np.float32)
    out = run_randaugment(images, np.repeat(matrix[None], n, 0), np.ones(n, bool),
                          np.zeros((n, 2), np.int32), np.zeros((n, 2, NUM_ARGS), np.float32))
    kw = {"resample": Image.BICUBIC, "fillcolor": FILL}
    timm_call = {"Rotate": lambda im: aa.rotate(im, 30 * level * sign, **kw),
                 "ShearX": lambda im: aa.shear_x(im, 0.3 * level * sign, **kw),
                 "ShearY": lambda im: aa.shear_y(im, 0.3 * level * sign, **kw),
                 "TranslateXRel": lambda im: aa.translate_x_rel(im, 0.45 * level * sign, **kw),
                 "TranslateYRel": lambda im: aa.translate_y_rel(im, 0.45 * level * sign, **kw)}[op]
    for im, got in zip(images, out):
        diff = np.abs(got.astype(int) - np.asarray(timm_call(Image.fromarray(im))).astype(int))
        # OpenCV's bicubic kernel (a = -0.75) against PIL's (a = -0.5): close, not equal
        assert np.median(diff) <= 1 and diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8, (op, diff.mean())


def test_gpu_graph_can_be_defined_without_a_gpu():
    """Defining (not building) the GPU graph runs all of its Python: the conditionals, each
    expression's operators and their argument devices."""

    defined = []

    @pipeline_def(batch_size=2, num_threads=1, device_id=0, enable_conditionals=True)
    def pipe():
        x = fn.external_source(name="x", batch=True, layout="HWC")
        m, g, c, v = (fn.external_source(name=name, batch=True) for name in "mgcv")
        defined.append(apply_randaugment(x.gpu(), m, g, c, v, (32, 32)))
        return defined[-1]

    pipe()
    assert [node.device for node in defined] == ["gpu"]
