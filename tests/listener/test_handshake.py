"""Routing and subprotocol choice of the upgrade request (pure)."""

from fieldsync.listener.handshake import Acceptance, Refusal, decide

DBS = {"fieldsync": object(), "sensors": object()}


def test_routes_to_database_with_cbmobile3() -> None:
    decision = decide("/sensors/_blipsync", ["BLIP_3+CBMobile_3,BLIP_3+CBMobile_2"], DBS)
    assert decision == Acceptance("sensors", "BLIP_3+CBMobile_3")


def test_accepts_cbmobile2_alone() -> None:
    assert decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_2"], DBS) == Acceptance(
        "fieldsync", "BLIP_3+CBMobile_2"
    )


def test_prefers_cbmobile3_when_4_is_offered_too() -> None:
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_4,BLIP_3+CBMobile_3"], DBS)
    assert decision == Acceptance("fieldsync", "BLIP_3+CBMobile_3")


def test_refuses_cbmobile4_only_clearly() -> None:
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_4"], DBS)
    assert isinstance(decision, Refusal)
    assert decision.status == 406
    assert "version vectors" in decision.message


def test_unknown_database_and_bad_paths_are_404() -> None:
    for path in ("/nope/_blipsync", "/fieldsync", "/fieldsync/_changes", "/"):
        decision = decide(path, ["BLIP_3+CBMobile_3"], DBS)
        assert isinstance(decision, Refusal) and decision.status == 404, path


def test_no_subprotocol_is_400() -> None:
    decision = decide("/fieldsync/_blipsync", [], DBS)
    assert isinstance(decision, Refusal) and decision.status == 400
