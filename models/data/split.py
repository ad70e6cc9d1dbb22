"""The leave-one-out split with 99 sampled negatives (LOO-99), and its JSON interchange file.

The recipe (EVALUATION.md) is exact so that other systems can reproduce it: per user, interactions sorted by
timestamp (ties by item id); the last is test, the one before validation, the rest train. Negatives are drawn once
with ``numpy.random.default_rng(seed)``: for each user in ascending id order,
``cand = sorted(all item ids − every item the user interacted with)``, ``draw = rng.choice(cand, 198,
replace=False)``, ``test_negs = draw[:99]``, ``valid_negs = draw[99:]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.assets import atomic_write_bytes
from models.data.catalog import Dataset
from models.errors import SplitError

N_NEGATIVES = 99


@dataclass
class UserSplit:
    """One user's part of the split, as dense item indices."""

    train: NDArray[np.int64]
    valid: int
    test: int
    valid_negs: NDArray[np.int64]
    test_negs: NDArray[np.int64]


@dataclass
class Split:
    """The whole split: ``users[u]`` for dense user ``u`` (users with fewer than 3 interactions are left out)."""

    dataset: str
    seed: int
    n_items: int
    users: dict[int, UserSplit]

    def subset(self, users: list[int]) -> Split:
        """The same split restricted to some users."""
        return Split(self.dataset, self.seed, self.n_items, {u: self.users[u] for u in users})


def _sort_key_ids(ids: list[str]) -> list[int] | list[str]:
    return [int(x) for x in ids] if all(x.isdigit() for x in ids) else ids


def make_loo_split(dataset: Dataset, *, seed: int = 0, n_negatives: int = N_NEGATIVES) -> Split:
    """Build the LOO split with ``n_negatives`` sampled negatives for validation and for test."""
    catalog = dataset.catalog
    inter = dataset.interactions
    item_keys = _sort_key_ids(catalog.item_ids)
    item_order = np.array(sorted(range(len(catalog)), key=lambda i: item_keys[i]), dtype=np.int64)
    # rank of each dense item in original-id order, to break timestamp ties by item id
    id_rank = np.empty(len(catalog), dtype=np.int64)
    id_rank[item_order] = np.arange(len(catalog))
    user_keys = _sort_key_ids(inter.user_ids)
    user_order = sorted(range(inter.n_users), key=lambda u: user_keys[u])

    order = np.lexsort((id_rank[inter.items], inter.timestamps, inter.users))
    users_sorted = inter.users[order]
    items_sorted = inter.items[order]
    bounds = np.searchsorted(users_sorted, np.arange(inter.n_users + 1))

    rng = np.random.default_rng(seed)
    out: dict[int, UserSplit] = {}
    sorted_ids = np.sort(np.array(item_keys)) if isinstance(item_keys[0], int) else None
    for u in user_order:
        seq = items_sorted[bounds[u] : bounds[u + 1]]
        if len(seq) < 3:
            continue
        seen = np.zeros(len(catalog), dtype=bool)
        seen[seq] = True
        cand_dense = item_order[~seen[item_order]]  # dense ids in ascending original-id order
        if sorted_ids is not None:
            cand = np.asarray([item_keys[i] for i in cand_dense], dtype=np.int64)
            draw_ids = rng.choice(cand, size=2 * n_negatives, replace=False)
            draw = id_to_dense(catalog.index, draw_ids)
        else:
            draw = cand_dense[rng.choice(len(cand_dense), size=2 * n_negatives, replace=False)]
        out[u] = UserSplit(
            train=seq[:-2].copy(),
            valid=int(seq[-2]),
            test=int(seq[-1]),
            valid_negs=draw[n_negatives:].astype(np.int64),
            test_negs=draw[:n_negatives].astype(np.int64),
        )
    return Split(dataset=dataset.name, seed=seed, n_items=len(catalog), users=out)


def id_to_dense(index: dict[str, int], ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """Map external integer ids to dense indices."""
    return np.array([index[str(int(x))] for x in ids], dtype=np.int64)


def _ext(item_ids: list[str], i: int) -> int | str:
    ext = item_ids[i]
    return int(ext) if ext.isdigit() else ext


def split_to_json(split: Split, dataset: Dataset) -> dict[str, Any]:
    """The split in the interchange format (original ids, users keyed by their id)."""
    item_ids = dataset.catalog.item_ids
    users: dict[str, Any] = {}
    for u, s in split.users.items():
        users[dataset.interactions.user_ids[u]] = {
            "train": [_ext(item_ids, int(i)) for i in s.train],
            "valid": _ext(item_ids, s.valid),
            "test": _ext(item_ids, s.test),
            "valid_negs": [_ext(item_ids, int(i)) for i in s.valid_negs],
            "test_negs": [_ext(item_ids, int(i)) for i in s.test_negs],
        }
    return {"dataset": split.dataset, "protocol": "loo99", "seed": split.seed, "users": users}


def split_bytes(split: Split, dataset: Dataset) -> bytes:
    """Canonical bytes of the split file (sorted keys, compact), the input of :func:`split_sha256`."""
    return json.dumps(split_to_json(split, dataset), sort_keys=True, separators=(",", ":")).encode("utf-8")


def split_sha256(split: Split, dataset: Dataset) -> str:
    """Content hash of the split, reported with every evaluation so results can be matched to their split."""
    return hashlib.sha256(split_bytes(split, dataset)).hexdigest()


def write_split(split: Split, dataset: Dataset, path: Path) -> None:
    """Write the split as JSON, atomically."""
    atomic_write_bytes(path, split_bytes(split, dataset))


def read_split(path: Path, dataset: Dataset) -> Split:
    """Read a split file in the interchange format and check it against the data set."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SplitError(f"Split file {path} does not exist.") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitError(f"Split file {path} is not valid JSON: {exc}.") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("users"), dict):
        raise SplitError(f"Split file {path} has no 'users' object.", hint="See EVALUATION.md for the format.")
    index = dataset.catalog.index
    user_index = {uid: u for u, uid in enumerate(dataset.interactions.user_ids)}

    def item(value: object, where: str) -> int:
        key = str(value)
        if key not in index:
            raise SplitError(f"Split file {path}: {where} names item {value!r}, which is not in {dataset.name}.")
        return index[key]

    users: dict[int, UserSplit] = {}
    for uid, entry in raw["users"].items():
        if uid not in user_index:
            raise SplitError(f"Split file {path}: user {uid!r} is not in {dataset.name}.")
        try:
            users[user_index[uid]] = UserSplit(
                train=np.array([item(i, f"user {uid} train") for i in entry["train"]], dtype=np.int64),
                valid=item(entry["valid"], f"user {uid} valid"),
                test=item(entry["test"], f"user {uid} test"),
                valid_negs=np.array([item(i, f"user {uid} valid_negs") for i in entry["valid_negs"]], dtype=np.int64),
                test_negs=np.array([item(i, f"user {uid} test_negs") for i in entry["test_negs"]], dtype=np.int64),
            )
        except (KeyError, TypeError) as exc:
            raise SplitError(f"Split file {path}: user {uid!r} lacks field {exc}.") from exc
    return Split(
        dataset=str(raw.get("dataset", dataset.name)),
        seed=int(raw.get("seed", -1)),
        n_items=len(dataset.catalog),
        users=dict(sorted(users.items())),
    )
