"""Run harnesses under atheris (libFuzzer): `python -m fuzz.run [NAME ...]`.

Each harness runs in its own process (libFuzzer owns the process and exits it), with
- seeds written from `../shared/corpus` into `var/fuzz/seeds/<name>/` and the corpus it
  grows in `var/fuzz/corpus/<name>/` (kept between runs, so coverage accumulates);
- `-runs` from FUZZ_RUNS and/or `-max_total_time` from FUZZ_SECONDS;
- `-timeout` (FUZZ_TIMEOUT, seconds for one input: longer is a hang) and `-rss_limit_mb`
  (FUZZ_RSS_MB: more is a memory bug);
- crashing inputs written to `var/fuzz/crashes/<name>/`; copy each into
  `fuzz/regressions/<name>/` once understood, so `make test` replays it for ever.
The last lines of each run (libFuzzer's final stats) go to `var/fuzz/results/<name>.log`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from fuzz.seeds import ROOT, write_seeds
from fuzz.targets import NAMES

VAR = ROOT / "var" / "fuzz"


def _libfuzzer_args(name: str, max_len: int) -> list[str]:
    args = [
        f"-timeout={os.environ.get('FUZZ_TIMEOUT', '10')}",
        f"-rss_limit_mb={os.environ.get('FUZZ_RSS_MB', '2048')}",
        f"-max_len={os.environ.get('FUZZ_MAX_LEN', max_len)}",
        f"-artifact_prefix={VAR / 'crashes' / name}/",
        "-print_final_stats=1",
    ]
    if os.environ.get("FUZZ_RUNS"):
        args.append(f"-runs={int(os.environ['FUZZ_RUNS'])}")
    if os.environ.get("FUZZ_SECONDS"):
        args.append(f"-max_total_time={int(os.environ['FUZZ_SECONDS'])}")
    return args


def fuzz_one(name: str, extra: list[str]) -> None:
    """In this process: instrument the code under test, then hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["connectors", "transformers", "engine", "loinc"]):
        from fuzz.targets import load

        harness = load(name)
        # Functions import some modules lazily: one call inside the block instruments them.
        for seed in list(harness.seeds())[:1]:
            harness.run(seed)
    corpus = VAR / "corpus" / name
    seeds = VAR / "seeds" / name
    for folder in (corpus, seeds, VAR / "crashes" / name):
        folder.mkdir(parents=True, exist_ok=True)
    write_seeds(seeds, harness.seeds())
    argv = [sys.argv[0], *_libfuzzer_args(name, harness.max_len), *extra, str(corpus), str(seeds)]
    atheris.Setup(argv, harness.run)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        fuzz_one(argv[1], argv[2:])
        return 0
    names = [a for a in argv if not a.startswith("-")] or list(NAMES)
    extra = [a for a in argv if a.startswith("-")]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"unknown harness(es): {', '.join(unknown)}; known: {', '.join(NAMES)}")
        return 2
    (VAR / "results").mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        log = VAR / "results" / f"{name}.log"
        print(f"== {name} (log: {log.relative_to(ROOT)})", flush=True)
        with log.open("w") as out:
            rc = subprocess.call([sys.executable, "-m", "fuzz.run", "--one", name, *extra],
                                 stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        tail = log.read_text(errors="replace").splitlines()
        for line in tail:
            if line.startswith(("stat::", "Done ", "==", "SUMMARY")) or "ERROR" in line:
                print(f"   {line}")
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"harnesses that found a bug: {', '.join(failed)} (inputs in var/fuzz/crashes/)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
