"""`transformer_options.crbio` in routes.yaml: validated with file:line errors, installed for
the `crbio` transformer, and required before CR-BIO documents may reach an enabled DMP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.config import ConfigError, apply_transformer_settings, load_text
from transformers.cda import to_crbio

from .test_engine_feed import CRBIO_OPTIONS


def routes(options: str = CRBIO_OPTIONS, dmp_enabled: bool = True) -> str:
    return f"""\
version: 1
{options}
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  dmp: {{type: dmp, enabled: {str(dmp_enabled).lower()}, options: {{url: "https://dmp.test/x"}}}}
routes:
  - name: lab-to-dmp
    when: {{message_type: ORU}}
    transform: [crbio]
    to: [dmp]
"""


@pytest.fixture(autouse=True)
def placeholder_settings() -> Iterator[None]:
    yield
    to_crbio.configure(to_crbio.CrBioSettings())


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_text(text, env={})
    return [str(p) for p in exc.value.problems]


def test_settings_are_built_and_installed(crbio_exchange: object) -> None:
    cfg = load_text(routes(), env={})
    settings = cfg.transformer_settings["crbio"]
    assert settings.configured and settings.laboratory.id_extension == "1750000001"
    assert settings.laboratory.address.postal_code == "75015"
    assert settings.custodian is not None and settings.custodian.name.startswith("Plateforme")
    assert settings.biologist.family == "PASTEUR"
    apply_transformer_settings(cfg)
    assert to_crbio.settings() is settings
    ex = to_crbio.to_crbio(crbio_exchange)  # type: ignore[arg-type]
    assert ex is not None
    body = ex.body.decode()
    assert "Laboratoire de biologie Paris 15" in body and "Plateforme régionale Parcours" in body
    assert "1.2.250.1.213.1.1.9.999" in body


def test_per_sender_laboratory() -> None:
    text = routes(CRBIO_OPTIONS + """\
    senders:
      CERBALLIANCE-IDF-DEMO:
        laboratory: {id: "1920000003", name: Cerballiance Hauts-de-Seine}
""")
    settings = load_text(text, env={}).transformer_settings["crbio"]
    assert settings.laboratories["CERBALLIANCE-IDF-DEMO"].name == "Cerballiance Hauts-de-Seine"


def test_missing_laboratory_is_reported_on_its_line() -> None:
    text = routes(CRBIO_OPTIONS.replace("    laboratory:\n", "    laboratory_x:\n"))
    found = problems(text)
    assert any(p.startswith("routes.yaml:3:") and "'laboratory' is a required property" in p
               for p in found), found


def test_bad_identifiers_say_what_is_expected() -> None:
    text = routes(CRBIO_OPTIONS.replace('id: "1750000001"', 'id: "175000"')
                  .replace('id: "810001234567"', 'id: "12345"')
                  .replace("document_oid: 1.2.250.1.213.1.1.9.999", "document_oid: urn:x"))
    found = "\n".join(problems(text))
    assert "transformer_options/crbio/laboratory/id: '175000' is not valid: National structure" \
           in found
    assert "IDNPS" in found and "document_oid" in found and "ISO OID" in found


def test_value_sets_are_checked() -> None:
    text = routes(CRBIO_OPTIONS.replace("      telecom: tel:0145000000\n",
                                        "      telecom: tel:0145000000\n"
                                        "      facility_type: XX99\n"))
    found = problems(text)
    assert any("laboratory.facility_type: 'XX99' is not in JDV_J02" in p and ":10:" in p
               for p in found), found


def test_crbio_to_an_enabled_dmp_needs_the_settings() -> None:
    found = problems(routes(options=""))
    assert any("transformer_options.crbio is not set" in p and "lab-to-dmp" in p
               for p in found), found
    load_text(routes(options="", dmp_enabled=False), env={})  # the default routes.yaml case
