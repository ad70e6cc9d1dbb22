"""Many agents of one round in one process (the simulation, the benchmarks): one copy of the round's id lists, the
same checks for every agent, and an exact sum."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.errors import ProtocolError
from sync.protocol import secagg
from sync.protocol.masking import Quantization, unpack
from sync.protocol.wire import setup_from_json

N = 40
SIZE = 8


def _round() -> tuple[list[secagg.AgentSession], dict[str, secagg.PeerKeys], secagg.RoundSetup]:
    """N agents advertised keys for round 7; the setup as each agent parses it from the coordinator's JSON."""
    sessions, keys = [], {}
    for _ in range(N):
        identity = Ed25519PrivateKey.generate()
        public = secagg.raw_public(identity)
        session = secagg.AgentSession(secagg.agent_id_for(public), identity, 7)
        c_pk, s_pk, signature = session.advertise()
        sessions.append(session)
        keys[session.agent_id] = secagg.PeerKeys(session.agent_id, public, c_pk, s_pk, signature)
    degree = secagg.graph_degree(N)
    q = Quantization.for_cohort(N, 1.0, bits=32)
    doc = {
        "cohort": sorted(keys),
        "degree": degree,
        "threshold": secagg.share_threshold(degree),
        "min_survivors": secagg.share_threshold(degree),
        "quantization": {"bits": q.bits, "levels": q.levels, "bound": q.bound},
        "vector_size": SIZE,
    }
    return sessions, keys, setup_from_json(doc, round_id=7, seed=os.urandom(32))


def _peers(setup: secagg.RoundSetup, keys: dict[str, secagg.PeerKeys], agent: str) -> list[secagg.PeerKeys]:
    index = setup.cohort.index(agent)
    return [keys[setup.cohort[j]] for j in secagg.neighbours(len(setup.cohort), setup.seed, setup.degree)[index]]


def test_agents_of_one_process_keep_one_copy_of_the_id_lists_and_the_round_sums_exactly() -> None:
    sessions, keys, setup = _round()
    sent: dict[str, dict[str, bytes]] = {}
    for session in sessions:
        mine = dataclasses.replace(setup, cohort=tuple(list(setup.cohort)))  # a fresh copy, as parsed per agent
        assert mine.cohort is not setup.cohort
        sent[session.agent_id] = session.share_keys(mine, _peers(setup, keys, session.agent_id))
    assert len({id(s.setup.cohort) for s in sessions if s.setup is not None}) == 1
    u2 = sorted(keys)
    rng = np.random.default_rng(1)
    inputs = {s.agent_id: rng.uniform(-0.5, 0.5, SIZE) for s in sessions}
    q = setup.quantization
    total = np.zeros(SIZE, dtype=np.uint32)
    for session in sessions:
        inbox = {v: out[session.agent_id] for v, out in sent.items() if session.agent_id in out}
        masked = session.masked_input(list(u2), inbox, inputs[session.agent_id])
        total = (total + unpack(masked, q.bits, SIZE).astype(np.uint32)) & q.modulus_mask
    assert len({id(s.u2) for s in sessions}) == 1
    b_shares: dict[str, list[tuple[int, bytes]]] = {}
    for session in sessions:
        revealed, dropped = session.unmask(list(u2), list(u2))
        assert not dropped
        for owner, share in revealed.items():
            b_shares.setdefault(owner, []).append((setup.cohort.index(session.agent_id) + 1, share))
    correction = secagg.unmasking_vector(setup, u2, u2, {a: k.s_pk for a, k in keys.items()}, b_shares, {})
    unmasked = q.decode_sum((total - correction) & q.modulus_mask)
    expected = sum(q.decode_sum(q.encode(v)[0]) for v in inputs.values())
    assert np.array_equal(unmasked, expected)


@pytest.mark.parametrize("bad", ["unsorted", "duplicate", "left_out", "wrong_neighbours"])
def test_every_agent_still_checks_the_cohort_and_its_neighbours_after_others_passed(bad: str) -> None:
    sessions, keys, setup = _round()
    first, agent = sessions[0], sessions[1]
    first.share_keys(setup, _peers(setup, keys, first.agent_id))  # a valid cohort, now cached in this process
    peers = _peers(setup, keys, agent.agent_id)
    cohort = list(setup.cohort)
    if bad == "unsorted":
        cohort[0], cohort[1] = cohort[1], cohort[0]
    elif bad == "duplicate":
        cohort[-1] = cohort[-2]
    elif bad == "left_out":
        cohort.remove(agent.agent_id)
    else:
        outsider = next(k for a, k in keys.items() if a != agent.agent_id and k not in peers)
        peers = [*peers[:-1], outsider]
    with pytest.raises(ProtocolError):
        agent.share_keys(dataclasses.replace(setup, cohort=tuple(cohort)), peers)
    assert agent.setup is None
