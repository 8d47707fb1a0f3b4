"""The station config: every documented key parses; mistakes are one sentence naming key and line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from device.errors import KenpinError
from device.station.config import StationConfig, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "station.yaml"


def test_documented_example_is_the_defaults():
    cfg = load_config(EXAMPLE)
    assert cfg.camera == StationConfig().camera
    assert cfg.trigger == StationConfig().trigger
    assert cfg.station.data_dir == Path("/var/lib/kenpin")


def test_every_key_of_the_example_carries_a_comment():
    for n, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"line {n} of {EXAMPLE.name} has no comment: {line!r}"


def test_unknown_key_is_named_with_its_line():
    text = "station:\n  name: a\ncamera:\n  type: replay\n  exposure: 3\n"
    with pytest.raises(KenpinError, match=r"line 5: camera\.exposure: unknown key"):
        parse_config(text, "st.yaml")


def test_wrong_type_is_named():
    with pytest.raises(KenpinError, match=r"line 2: trigger\.every_n = 'two': expected a whole number"):
        parse_config("trigger:\n  every_n: two\n", "st.yaml")
    with pytest.raises(KenpinError, match=r"camera\.replay\.loop = 'yes please': expected true or false"):
        parse_config("camera:\n  replay:\n    loop: yes please\n", "st.yaml")


def test_out_of_range_and_bad_choice_are_named():
    with pytest.raises(KenpinError, match=r"decision\.threshold = 1\.5: must be strictly between 0 and 1"):
        parse_config("decision:\n  threshold: 1.5\n", "st.yaml")
    with pytest.raises(KenpinError, match=r"camera\.type = 'usb'"):
        parse_config("camera:\n  type: usb\n", "st.yaml")
    with pytest.raises(KenpinError, match=r"pipeline\.workers = 0: must be between 1 and 16"):
        parse_config("pipeline:\n  workers: 0\n", "st.yaml")


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "st.yaml"
    path.write_text("station:\n  data_dir: data\nbundle:\n  path: b\ncamera:\n  replay:\n    folder: imgs\n")
    cfg = load_config(path)
    assert cfg.station.data_dir == tmp_path / "data"
    assert cfg.camera.replay.folder == tmp_path / "imgs"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(KenpinError, match="station config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("station: [unclosed\n")
    with pytest.raises(KenpinError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_a_new_actuator_or_trigger_input_is_one_class_in_its_registry(monkeypatch):
    from device.station.actuator import ACTUATORS, make_actuator
    from device.station.triggers import TRIGGER_INPUTS

    class Relay:
        def __init__(self, cfg, pin_factory=None):
            self.cfg = cfg

    with pytest.raises(KenpinError, match=r"line 2: actuator.type = 'relay': must be one of"):
        parse_config("actuator:\n  type: relay\n", "st.yaml")
    monkeypatch.setitem(ACTUATORS, "relay", Relay)
    monkeypatch.setitem(TRIGGER_INPUTS, "laser", Relay)
    cfg = parse_config("actuator:\n  type: relay\ntrigger:\n  mode: laser\n", "st.yaml")
    assert isinstance(make_actuator(cfg.actuator), Relay) and cfg.trigger.mode == "laser"


def test_a_new_camera_is_one_class_whose_settings_are_its_block(monkeypatch):
    from dataclasses import dataclass

    from device.station.camera import CAMERAS, make_camera

    @dataclass(frozen=True)
    class GigESettings:
        address: str = "192.168.0.10"
        exposure_us: int = 1000

    class GigECamera:
        Settings = GigESettings

        def __init__(self, address: str, exposure_us: int) -> None:
            self.address, self.exposure_us = address, exposure_us

    monkeypatch.setitem(CAMERAS, "gige", GigECamera)
    cfg = parse_config("camera:\n  type: gige\n  gige:\n    exposure_us: 500\n", "st.yaml")
    cam = make_camera(cfg.camera.type, cfg.camera.settings)
    assert isinstance(cam, GigECamera) and (cam.address, cam.exposure_us) == ("192.168.0.10", 500)
    with pytest.raises(KenpinError, match=r"line 3: camera.gige.adress: unknown key"):
        parse_config("camera:\n  gige:\n    adress: x\n", "st.yaml")


# ---- products --------------------------------------------------------------------------------

PRODUCTS = """products:
  - number: 1
    name: bolt
    bundle: bundles/bolt
    threshold: 0.6
  - number: 7
    bundle: bundles/nut
    pulse_ms: 20
    delay_ms: 150
product: 7
"""


def test_products_parse_with_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "st.yaml"
    path.write_text(PRODUCTS)
    cfg = load_config(path)
    bolt, nut = cfg.product_sections()
    assert (bolt.number, bolt.label, bolt.bundle, bolt.threshold) == (1, "bolt", tmp_path / "bundles/bolt", 0.6)
    assert (nut.label, nut.pulse_ms, nut.delay_ms, nut.threshold) == ("product 7", 20.0, 150.0, None)
    assert cfg.start_product == 7


def test_the_documented_products_example_loads_once_uncommented(tmp_path):
    lines = EXAMPLE.read_text().splitlines()
    first = lines.index("# products:")
    last = next(i for i, line in enumerate(lines) if line.startswith("# product:"))
    (tmp_path / "st.yaml").write_text("\n".join(line[2:] for line in lines[first:last + 1]) + "\n")
    cfg = load_config(tmp_path / "st.yaml")
    assert [(p.number, p.label, p.bundle) for p in cfg.product_sections()] == \
        [(1, "bolt M8", tmp_path / "bundles/bolt-m8"), (2, "nut M8", tmp_path / "bundles/nut-m8")]
    assert cfg.start_product == 1 and cfg.products[0].delay_ms == 120.0


def test_without_products_the_station_is_its_one_product_zero():
    cfg = parse_config("station:\n  name: press-3\nbundle:\n  path: /b\n", "st.yaml")
    (only,) = cfg.product_sections()
    assert (only.number, only.label, only.bundle, cfg.start_product) == (0, "press-3", Path("/b"), 0)


@pytest.mark.parametrize("text, message", [
    ("products:\n  - number: 1\n    bundle: a\n  - number: 2\n    name: nut\n",
     r"st.yaml, line 4: products\[1\]\.bundle: missing; this key is required"),
    ("products:\n  - number: 1\n    bundle: a\n  - number: 1\n    bundle: b\n",
     r"st.yaml, line 4: products\[1\]\.number = 1: products\[0\] already has this number"),
    ("products:\n  - number: 1\n    bundle: a\nproduct: 4\n",
     r"st.yaml, line 4: product = 4: names no product; use one of the numbers in products: \[1\]"),
    ("product: 2\n", r"st.yaml, line 1: product = 2: names no product; without products: the station's only product is 0"),
    ("products:\n  - {number: 1, bundle: a}\n  - {number: 2, bundle: b, threshold: 1.5}\n",
     r"st.yaml, line 3: products\[1\]\.threshold = 1\.5: must be strictly between 0 and 1"),
    ("products:\n  - number: 1\n    bundel: a\n", r"st.yaml, line 3: products\[0\]\.bundel: unknown key"),
    ("products:\n  - 3\n", r"st.yaml, line 2: products\[0\]: expected a mapping of keys"),
    ("record:\n  frame_format: tiff\n", r"st.yaml, line 2: record\.frame_format = 'tiff': use jpg or png"),
])
def test_product_mistakes_are_one_sentence_naming_the_item_key_and_line(text, message):
    with pytest.raises(KenpinError, match=message) as e:
        parse_config(text, "st.yaml")
    assert "\n" not in str(e.value)


# ---- files named in the opcua and mqtt sections ----------------------------------------------

def test_opcua_and_mqtt_files_are_relative_to_the_config_file_not_the_working_directory(tmp_path, monkeypatch):
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    for name in ("certs/server.pem", "certs/server.key", "clients/plc.der", "secrets/mqtt.pw"):
        (etc / name).parent.mkdir(parents=True, exist_ok=True)
        (etc / name).write_text("x")
    ca = tmp_path / "ca.pem"  # absolute: kept as written
    ca.write_text("x")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as a service started from / would be
    text = ("opcua:\n  security: [sign]\n  certificate: certs/server.pem\n  private_key: ./certs/server.key\n"
            "  trusted_certs: clients\n"
            f"mqtt:\n  password_file: secrets/mqtt.pw\n  tls_ca_file: {ca}\n")
    (etc / "st.yaml").write_text(text)
    cfg = load_config(Path("../etc/st.yaml"))  # a relative --config too
    o, m = cfg.opcua, cfg.mqtt
    assert [Path(p).resolve() for p in (o.certificate, o.private_key, o.trusted_certs, m.password_file)] == \
        [etc / "certs/server.pem", etc / "certs/server.key", etc / "clients", etc / "secrets/mqtt.pw"]
    assert m.tls_ca_file == str(ca)
    (etc / "st.yaml").write_text(text.replace("secrets/mqtt.pw", "secrets/missing.pw"))
    missing = re.escape(repr(str(etc / "secrets/missing.pw")))
    with pytest.raises(KenpinError, match=rf"line 7: mqtt\.password_file = {missing}: must be an existing file$"):
        load_config(etc / "st.yaml")
