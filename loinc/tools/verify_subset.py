"""Which codes of the shipped LOINC subset are confirmed by an official source?

Developer tool, not shipped at run time (``loinc/tools`` is not a package). It reads
``loinc/data/loinc_subset.csv`` and every ANS CI-SIS value set (IHE SVS XML) found in
``loinc/data/ans`` and in the shared JDV corpus (``$PARCOURS_CORPUS/jdv``, default
``../shared/corpus/jdv``), keeps the concepts whose codeSystem is LOINC
(2.16.840.1.113883.6.1) and that carry a displayName, and prints:

* the subset codes confirmed by a value set (code -> value set files);
* the subset codes that no value set lists, i.e. what must be checked elsewhere;
* with ``--verification``, how ``loinc/data/verification.csv`` covers the subset (every row of
  the subset must have exactly one verification row, and the ANS-confirmed codes must say so).

Usage (from the repository root)::

    .venv/bin/python loinc/tools/verify_subset.py            # summary + remaining codes
    .venv/bin/python loinc/tools/verify_subset.py --verification
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from loinc.catalogue import is_valid_loinc_code  # noqa: E402
from safexml import UnsafeXML, parse  # noqa: E402

DATA = ROOT / "loinc" / "data"
SUBSET = DATA / "loinc_subset.csv"
VERIFICATION = DATA / "verification.csv"
LOINC_OID = "2.16.840.1.113883.6.1"
SVS_NS = "{urn:ihe:iti:svs:2008}"


def value_set_dirs() -> list[Path]:
    corpus = Path(os.environ.get("PARCOURS_CORPUS", ROOT.parent / "shared" / "corpus"))
    return [d for d in (DATA / "ans", corpus / "jdv") if d.is_dir()]


def ans_loinc_codes(dirs: list[Path]) -> dict[str, dict[str, str]]:
    """code -> {value set file name: displayName} for every LOINC concept with a displayName."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for directory in dirs:
        for path in sorted(directory.glob("*.xml")):
            try:
                root = parse(path.read_bytes())
            except UnsafeXML as exc:
                print(f"skipped {path}: {exc}", file=sys.stderr)
                continue
            for concept in root.iter(f"{SVS_NS}Concept"):
                code = concept.get("code", "").strip()
                display = (concept.get("displayName") or "").strip()
                if concept.get("codeSystem") == LOINC_OID and code and display:
                    found[code].setdefault(path.name, display)
    return found


def read_subset() -> list[dict[str, str]]:
    with SUBSET.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def check_verification(codes: list[str], ans: dict[str, dict[str, str]]) -> int:
    if not VERIFICATION.exists():
        print(f"{VERIFICATION} is missing")
        return 1
    with VERIFICATION.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    problems = 0
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        code = row["LOINC_NUM"]
        if code in seen:
            print(f"duplicate verification row for {code}")
            problems += 1
        seen[code] = row
        if row["status"] not in {"confirmed", "corrected", "unconfirmed"}:
            print(f"{code}: unknown status {row['status']!r}")
            problems += 1
        if row["status"] != "unconfirmed" and not row["source"].strip():
            print(f"{code}: {row['status']} without a source")
            problems += 1
    for code in codes:
        if code not in seen:
            print(f"{code}: no verification row")
            problems += 1
        elif code in ans and seen[code]["status"] == "unconfirmed":
            print(f"{code}: listed by an ANS value set but recorded unconfirmed")
            problems += 1
    for code in seen.keys() - set(codes):
        print(f"{code}: verification row for a code not in the subset")
        problems += 1
    counts: dict[str, int] = defaultdict(int)
    for code in codes:
        if code in seen:
            counts[seen[code]["status"]] += 1
    print("verification.csv:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verification", action="store_true", help="check verification.csv")
    parser.add_argument("--quiet", action="store_true", help="counts only")
    args = parser.parse_args(argv)

    dirs = value_set_dirs()
    ans = ans_loinc_codes(dirs)
    rows = read_subset()
    codes = [row["LOINC_NUM"] for row in rows]
    bad = [code for code in codes if not is_valid_loinc_code(code)]
    confirmed = [code for code in codes if code in ans]
    remaining = [code for code in codes if code not in ans]

    print(f"value set folders: {', '.join(str(d) for d in dirs)}")
    print(f"subset: {len(codes)} codes, {len(set(codes))} distinct, {len(bad)} bad check digits")
    print(f"confirmed by an ANS value set: {len(confirmed)}; remaining: {len(remaining)}")
    if not args.quiet:
        for code in confirmed:
            files = ", ".join(sorted(ans[code]))
            print(f"  ANS {code:>8}  {files}  [{next(iter(ans[code].values()))}]")
        print("remaining (to check against another source):")
        names = {row["LOINC_NUM"]: row["LONG_COMMON_NAME"] for row in rows}
        for code in remaining:
            print(f"  {code:>8}  {names[code]}")
    status = 1 if bad or len(set(codes)) != len(codes) else 0
    if args.verification:
        status |= check_verification(codes, ans)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
