# ruff: noqa: E501  (data tables: one test per line reads better than wrapped)
"""Generate the demo mapping files and sample ORU^R01 messages of three laboratories.

The three laboratories (invented, Île-de-France) report the same 40 tests for the same
patient sample, each with its own codes, labels, units and decimal separator. Run from the
repository root: ``python tests/loinc/data/generate_samples.py``; it rewrites
``mappings/*.yaml`` and ``tests/loinc/data/oru_*.hl7``.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

LABS = {
    "LABO-BIO-PARIS15": {
        "file": "labo-bio-paris15",
        "description": "Laboratoire de biologie médicale Paris 15e (demo); decimal comma, g/L, G/L",
        "decimal": ",",
        "eol": "\r",
    },
    "CERBALLIANCE-IDF-DEMO": {
        "file": "cerballiance-idf-demo",
        "description": "Plateau technique Île-de-France (demo); SI units, 10^9/L",
        "decimal": ".",
        "eol": "\r\n",
    },
    "BIOGROUP-VAL-DE-MARNE-DEMO": {
        "file": "biogroup-val-de-marne-demo",
        "description": "Biogroup Val-de-Marne (demo); conventional units mg/dL, /mm3",
        "decimal": ".",
        "eol": "\n",
    },
}
P15, CER, BIO = LABS

# key: {lab: (code, label, loinc, unit, value, reference range)}
TESTS: list[dict[str, tuple[str, str, str, str, str, str]]] = [
    {P15: ("GLY", "Glycémie à jeun", "2345-7", "g/L", "1.05", "0.70-1.10"),
     CER: ("GLU", "Glucose", "14749-6", "mmol/L", "5.83", "3.9-6.1"),
     BIO: ("GLYC", "Glycemie", "2345-7", "mg/dL", "105", "70-110")},
    {P15: ("CREA", "Créatinine", "2160-0", "mg/L", "10", "6-12"),
     CER: ("CREAT", "Créatinine", "14682-9", "µmol/L", "88", "53-106"),
     BIO: ("CRE", "Creatinine", "2160-0", "mg/dL", "1.00", "0.60-1.20")},
    {P15: ("UREE", "Urée", "3091-6", "g/L", "0.30", "0.15-0.45"),
     CER: ("UREA", "Urée", "22664-7", "mmol/L", "5.0", "2.5-7.5"),
     BIO: ("URE", "Uree", "3091-6", "mg/dL", "30", "15-45")},
    {P15: ("AURI", "Acide urique", "3084-1", "mg/L", "50", "35-72"),
     CER: ("URIC", "Acide urique", "14933-6", "µmol/L", "297", "208-428"),
     BIO: ("AU", "Acide urique", "3084-1", "mg/dL", "5.0", "3.5-7.2")},
    {P15: ("NA", "Sodium", "2951-2", "mmol/l", "140", "136-145"),
     CER: ("NA+", "Sodium", "2951-2", "mmol/L", "140", "136-145"),
     BIO: ("SOD", "Natrémie", "2951-2", "mmol/L", "140", "136-145")},
    {P15: ("K", "Potassium", "2823-3", "mmol/l", "4,1", "3,5-5,1"),
     CER: ("K+", "Potassium", "2823-3", "mmol/L", "4.1", "3.5-5.1"),
     BIO: ("POT", "Kaliémie", "2823-3", "mmol/L", "4.1", "3.5-5.1")},
    {P15: ("CL", "Chlore", "2075-0", "mmol/l", "102", "98-107"),
     CER: ("CL-", "Chlorure", "2075-0", "mmol/L", "102", "98-107"),
     BIO: ("CHLO", "Chlorémie", "2075-0", "mmol/L", "102", "98-107")},
    {P15: ("RA", "Réserve alcaline", "2028-9", "mmol/l", "26", "22-29"),
     CER: ("CO2T", "CO2 total", "2028-9", "mmol/L", "26", "22-29"),
     BIO: ("BICA", "Bicarbonates", "2028-9", "mmol/L", "26", "22-29")},
    {P15: ("CA", "Calcium", "17861-6", "mg/L", "95", "86-102"),
     CER: ("CALC", "Calcium", "2000-8", "mmol/L", "2.37", "2.15-2.55"),
     BIO: ("CA", "Calcemie", "17861-6", "mg/dL", "9.5", "8.6-10.2")},
    {P15: ("MG", "Magnésium", "19123-9", "mg/L", "21", "18-26"),
     CER: ("MAG", "Magnésium", "2601-3", "mmol/L", "0.86", "0.74-1.07"),
     BIO: ("MG", "Magnesemie", "19123-9", "mg/dL", "2.1", "1.8-2.6")},
    {P15: ("PHOS", "Phosphore", "2777-1", "mg/L", "35", "25-45"),
     CER: ("PO4", "Phosphates", "14879-1", "mmol/L", "1.13", "0.81-1.45"),
     BIO: ("PHO", "Phosphore", "2777-1", "mg/dL", "3.5", "2.5-4.5")},
    {P15: ("CHOL", "Cholestérol total", "2093-3", "g/L", "2.00", "<2.00"),
     CER: ("CT", "Cholestérol total", "14647-2", "mmol/L", "5.17", "<5.17"),
     BIO: ("CHOLT", "Cholesterol total", "2093-3", "mg/dL", "200", "<200")},
    {P15: ("HDL", "Cholestérol HDL", "2085-9", "g/L", "0.55", "> 0.40"),
     CER: ("HDLC", "HDL-cholestérol", "14646-4", "mmol/L", "1.42", "> 1.03"),
     BIO: ("HDL", "HDL cholesterol", "2085-9", "mg/dL", "55", "> 40")},
    {P15: ("LDLC", "Cholestérol LDL calculé", "13457-7", "g/L", "1.20", "<1.60"),
     CER: ("LDL", "LDL-cholestérol calculé", "39469-2", "mmol/L", "3.10", "<4.14"),
     BIO: ("LDL", "LDL cholesterol calc", "13457-7", "mg/dL", "120", "<160")},
    {P15: ("TG", "Triglycérides", "2571-8", "g/L", "1.25", "<1.50"),
     CER: ("TRIG", "Triglycérides", "14927-8", "mmol/L", "1.41", "<1.70"),
     BIO: ("TRIG", "Triglycerides", "2571-8", "mg/dL", "125", "<150")},
    {P15: ("BILT", "Bilirubine totale", "1975-2", "mg/L", "7", "<12"),
     CER: ("BT", "Bilirubine totale", "14631-6", "µmol/L", "12", "<21"),
     BIO: ("TBIL", "Bilirubine totale", "1975-2", "mg/dL", "0.70", "<1.20")},
    {P15: ("ALAT", "ALAT (TGP)", "1742-6", "UI/L", "25", "<35"),
     CER: ("ALT", "ALAT", "1742-6", "U/L", "25", "<35"),
     BIO: ("GPT", "Transaminases ALAT", "1742-6", "UI/L", "25", "<35")},
    {P15: ("ASAT", "ASAT (TGO)", "1920-8", "UI/L", "22", "<35"),
     CER: ("AST", "ASAT", "1920-8", "U/L", "22", "<35"),
     BIO: ("GOT", "Transaminases ASAT", "1920-8", "UI/L", "22", "<35")},
    {P15: ("GGT", "Gamma GT", "2324-2", "UI/L", "30", "<55"),
     CER: ("GGT", "Gamma-glutamyltransférase", "2324-2", "U/L", "30", "<55"),
     BIO: ("GAMMA", "Gamma GT", "2324-2", "UI/L", "30", "<55")},
    {P15: ("PAL", "Phosphatases alcalines", "6768-6", "UI/L", "80", "40-130"),
     CER: ("ALP", "Phosphatases alcalines", "6768-6", "U/L", "80", "40-130"),
     BIO: ("PHAL", "Phosphatases alcalines", "6768-6", "UI/L", "80", "40-130")},
    {P15: ("CRP", "Protéine C réactive", "1988-5", "mg/L", "3,2", "<5"),
     CER: ("CRP", "CRP", "1988-5", "mg/L", "3.2", "<5"),
     BIO: ("PCR", "Proteine C reactive", "1988-5", "mg/dL", "0.32", "<0.5")},
    {P15: ("ALB", "Albumine", "1751-7", "g/L", "42", "35-52"),
     CER: ("ALBU", "Albumine", "1751-7", "g/dL", "4.2", "3.5-5.2"),
     BIO: ("ALB", "Albuminemie", "1751-7", "g/L", "42", "35-52")},
    {P15: ("PROT", "Protides totaux", "2885-2", "g/L", "72", "64-83"),
     CER: ("PROTT", "Protéines totales", "2885-2", "g/dL", "7.2", "6.4-8.3"),
     BIO: ("PROTI", "Proteines totales", "2885-2", "g/L", "72", "64-83")},
    {P15: ("FERR", "Ferritine", "2276-4", "µg/L", "85", "30-300"),
     CER: ("FERRI", "Ferritine", "2276-4", "ng/mL", "85", "30-300"),
     BIO: ("FERRIT", "Ferritine", "2276-4", "ug/L", "85", "30-300")},
    {P15: ("FE", "Fer sérique", "14798-3", "µmol/L", "18", "11-31"),
     CER: ("FER", "Fer", "2498-4", "µg/dL", "100", "60-170"),
     BIO: ("SIDE", "Sideremie", "14798-3", "umol/L", "18", "11-31")},
    {P15: ("TSH", "TSH ultrasensible", "3016-3", "mUI/L", "1,85", "0,27-4,20"),
     CER: ("TSHUS", "TSH", "3016-3", "µUI/mL", "1.85", "0.27-4.20"),
     BIO: ("TSH3", "TSH 3e generation", "3016-3", "mUI/L", "1.85", "0.27-4.20")},
    {P15: ("T4L", "T4 libre", "14920-3", "pmol/L", "15,4", "12,0-22,0"),
     CER: ("FT4", "Thyroxine libre", "3024-7", "ng/dL", "1.20", "0.93-1.71"),
     BIO: ("T4L", "T4 libre", "14920-3", "pmol/L", "15.4", "12.0-22.0")},
    {P15: ("HBA1C", "Hémoglobine glyquée", "4548-4", "%", "5,6", "4,0-6,0"),
     CER: ("A1C", "HbA1c", "4548-4", "%", "5.6", "4.0-6.0"),
     BIO: ("HBGLY", "Hemoglobine glyquee", "4548-4", "%", "5.6", "4.0-6.0")},
    {P15: ("HB", "Hémoglobine", "718-7", "g/dL", "14,0", "13,0-17,0"),
     CER: ("HGB", "Hémoglobine", "718-7", "g/L", "140", "130-170"),
     BIO: ("HB", "Hemoglobine", "718-7", "g/dL", "14.0", "13.0-17.0")},
    {P15: ("GB", "Leucocytes", "6690-2", "G/L", "7,5", "4,0-10,0"),
     CER: ("WBC", "Leucocytes", "6690-2", "10^9/L", "7.5", "4.0-10.0"),
     BIO: ("LEUCO", "Globules blancs", "6690-2", "/mm3", "7500", "4000-10000")},
    {P15: ("GR", "Hématies", "789-8", "T/L", "4,80", "4,28-5,79"),
     CER: ("RBC", "Érythrocytes", "789-8", "10^12/L", "4.80", "4.28-5.79"),
     BIO: ("HEMAT", "Globules rouges", "789-8", "10*12/L", "4.80", "4.28-5.79")},
    {P15: ("HT", "Hématocrite", "4544-3", "%", "42,0", "40,0-54,0"),
     CER: ("HCT", "Hématocrite", "4544-3", "L/L", "0.420", "0.400-0.540"),
     BIO: ("HEMATO", "Hematocrite", "4544-3", "%", "42.0", "40.0-54.0")},
    {P15: ("VGM", "Volume globulaire moyen", "787-2", "fl", "87,5", "80,0-100,0"),
     CER: ("MCV", "VGM", "787-2", "fL", "87.5", "80.0-100.0"),
     BIO: ("VGM", "V.G.M.", "787-2", "µ3", "87.5", "80.0-100.0")},
    {P15: ("PLQ", "Plaquettes", "777-3", "G/L", "250", "150-400"),
     CER: ("PLT", "Plaquettes", "777-3", "10^9/L", "250", "150-400"),
     BIO: ("PLAQ", "Plaquettes", "777-3", "/mm3", "250000", "150000-400000")},
    {P15: ("PNN", "Polynucléaires neutrophiles", "751-8", "G/L", "4,20", "1,80-7,50"),
     CER: ("NEUT", "Neutrophiles", "751-8", "10^9/L", "4.20", "1.80-7.50"),
     BIO: ("POLYN", "Polynucleaires neutrophiles", "751-8", "/mm3", "4200", "1800-7500")},
    {P15: ("LYM", "Lymphocytes", "731-0", "G/L", "2,50", "1,00-4,00"),
     CER: ("LYMPH", "Lymphocytes", "731-0", "10^9/L", "2.50", "1.00-4.00"),
     BIO: ("LYMPHO", "Lymphocytes", "731-0", "/mm3", "2500", "1000-4000")},
    {P15: ("TP", "Taux de prothrombine", "5894-1", "%", "95", "70-120"),
     CER: ("PT%", "Taux de prothrombine", "5894-1", "%", "95", "70-120"),
     BIO: ("TQ", "Temps de Quick (taux)", "5894-1", "%", "95", "70-120")},
    {P15: ("INR", "INR", "6301-6", "", "1,02", ""),
     CER: ("INR", "INR", "6301-6", "", "1.02", ""),
     BIO: ("INR", "INR", "6301-6", "", "1.02", "")},
    {P15: ("TCA", "Temps de céphaline activée", "14979-9", "s", "31,5", "25,0-38,0"),
     CER: ("APTT", "TCA patient", "14979-9", "sec", "31.5", "25.0-38.0"),
     BIO: ("TCK", "TCA", "14979-9", "s", "31.5", "25.0-38.0")},
    {P15: ("FIB", "Fibrinogène", "3255-7", "g/L", "3,10", "2,00-4,00"),
     CER: ("FIBR", "Fibrinogène", "3255-7", "mg/dL", "310", "200-400"),
     BIO: ("FIBRI", "Fibrinogene", "3255-7", "g/L", "3.10", "2.00-4.00")},
]

# A code each laboratory sends but nobody mapped yet: it must land in the backlog.
UNMAPPED = {
    P15: ("VITD", "Vitamine D (25-OH)", "ng/mL", "28,5", "30-100"),
    CER: ("25OHD", "25-OH vitamine D", "nmol/L", "71", "75-250"),
    BIO: ("VD25", "Vitamine D", "ng/mL", "28.5", "30-100"),
}


def write_mappings() -> None:
    for sender, lab in LABS.items():
        lines = [
            f"# {lab['description']}",
            "# Local code -> LOINC. Generated by tests/loinc/data/generate_samples.py, then",
            "# maintained by `parcours mappings accept` (comments are kept).",
            f"sender: {sender}",
            f"description: {json.dumps(lab['description'], ensure_ascii=False)}",
            "coding_system: L",
            f"decimal_separator: \"{lab['decimal']}\"",
            "codes:",
        ]
        for test in TESTS:
            code, label, loinc, unit, _value, _range = test[sender]
            entry = f"code: {json.dumps(code)}, loinc: {loinc}, text: {json.dumps(label, ensure_ascii=False)}"
            lines.append(f"  - {{{entry}}}")
        (ROOT / "mappings" / f"{lab['file']}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    )


def message(sender: str, tests: list[tuple[str, str, str, str, str, str]], control: str) -> str:
    lab = LABS[sender]
    segments = [
        f"MSH|^~\\&|SIL|{sender}|PARCOURS|TERR-ESANTE-DEMO|20250114093000||ORU^R01^ORU_R01|{control}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        "PID|1||DEMO000123^^^PARCOURS-DEMO^PI||PATIENT^DEMO||19700101|F",
        "OBR|1|ORD-1|RES-1|BIOCHIMIE^Bilan^L|||20250114080000",
    ]
    for index, (code, label, unit, value, ranges) in enumerate(tests, start=1):
        if lab["decimal"] == ",":
            value = value.replace(".", ",")
            ranges = ranges.replace(".", ",")
        value_type = "NM"
        segments.append(
            f"OBX|{index}|{value_type}|{code}^{_escape(label)}^L||{value}|{_escape(unit)}|{_escape(ranges)}|||"
            f"|F|||20250114080000|||||||||{sender}"
        )
    return lab["eol"].join(segments) + lab["eol"]


def write_messages() -> None:
    out = ROOT / "tests" / "loinc" / "data"
    for sender, lab in LABS.items():
        full = [(t[sender][0], t[sender][1], t[sender][3], t[sender][4], t[sender][5]) for t in TESTS]
        full.append(UNMAPPED[sender])
        (out / f"oru_{lab['file']}_full.hl7").write_bytes(
            message(sender, full, f"{lab['file'][:6].upper()}-FULL").encode("utf-8")
        )
        (out / f"oru_{lab['file']}_12.hl7").write_bytes(
            message(sender, full[:12], f"{lab['file'][:6].upper()}-12").encode("utf-8")
        )


if __name__ == "__main__":
    write_mappings()
    write_messages()
