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


def test_client_order_decides_like_sync_gateway() -> None:
    # A LiteCore 4.1 rev-tree push-only replicator offers 4,3 and gets 4 from Sync Gateway.
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_4,BLIP_3+CBMobile_3"], DBS)
    assert decision == Acceptance("fieldsync", "BLIP_3+CBMobile_4")
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_3, BLIP_3+CBMobile_4"], DBS)
    assert decision == Acceptance("fieldsync", "BLIP_3+CBMobile_3")


def test_cbmobile4_only_is_accepted() -> None:
    """A Couchbase Lite 4.x phone on a default (version-vector) database offers only this."""
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_4"], DBS)
    assert decision == Acceptance("fieldsync", "BLIP_3+CBMobile_4")


def test_unknown_protocols_are_skipped_then_refused_clearly() -> None:
    decision = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_5, BLIP_3+CBMobile_4"], DBS)
    assert decision == Acceptance("fieldsync", "BLIP_3+CBMobile_4")
    refused = decide("/fieldsync/_blipsync", ["BLIP_3+CBMobile_5", "chat"], DBS)
    assert isinstance(refused, Refusal) and refused.status == 406
    assert "BLIP_3+CBMobile_4" in refused.message and "BLIP_3+CBMobile_5" in refused.message


def test_unknown_database_and_bad_paths_are_404() -> None:
    for path in ("/nope/_blipsync", "/fieldsync", "/fieldsync/_changes", "/"):
        decision = decide(path, ["BLIP_3+CBMobile_3"], DBS)
        assert isinstance(decision, Refusal) and decision.status == 404, path


def test_no_subprotocol_is_400() -> None:
    decision = decide("/fieldsync/_blipsync", [], DBS)
    assert isinstance(decision, Refusal) and decision.status == 400
