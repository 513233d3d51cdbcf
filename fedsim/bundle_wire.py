"""Bundles on the wire: several phones' records in one Flower message (issue 25).

At cross-device scale a phone's work is as small as the per-call cost of a Flower message, so
fedsim can send each execution slot one *bundle* a round: the records of every phone the slot
should run, each record stored once however many phones share it (the global model is one
``ArrayRecord`` object in every phone's message, :mod:`fedsim.strategy.virtual_clients`), and a
layout (:data:`fedsim.keys.BUNDLE`) saying which records are whose under which name. The reply
is a bundle too: every phone's reply records, or, for a phone that failed, its ``Error``.

Both halves use these two functions: the server (:mod:`fedsim.server.bundles`) packs
instructions and unpacks replies, the phone (:mod:`clients.bundles`) unpacks instructions and
packs replies. What a phone receives and sends is exactly what a message of its own would have
held, so the phone's code path and its numbers are those of per-phone messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Error, RecordDict

from fedsim import keys

_PHONES = "phones"


def is_bundle(content: RecordDict) -> bool:
    """Whether a message's content is a bundle (it carries the bundle layout)."""
    return keys.BUNDLE in content.config_records


def pack(
    entries: Sequence[RecordDict | Error], options: Mapping[str, Any] | None = None,
    partial: RecordDict | None = None,
) -> RecordDict:
    """One RecordDict holding every phone's records (or error), each distinct record once.

    Records are shared by identity: the same object in several phones' contents is stored once
    (``r<k>``), which is what makes the global model travel once per bundle. ``options``
    (config values) go into the layout, for the slot (:func:`options`); ``partial``, a slot's
    partial sum (:mod:`clients.partial_sums`), goes beside the phones' records
    (:func:`partial_of`).

    >>> from flwr.app import ConfigRecord
    >>> shared = ConfigRecord({"lr": 0.1})
    >>> bundle = pack([RecordDict({"c": shared}), RecordDict({"c": shared}), Error(2, "boom")])
    >>> sorted(bundle.keys())
    ['fedsim.bundle', 'r0']
    >>> [type(e).__name__ for e in unpack(bundle)]
    ['RecordDict', 'RecordDict', 'Error']
    """
    bundle = RecordDict()
    stored: dict[int, str] = {}  # id(record) -> its key in the bundle
    layout: dict = {**(options or {}), _PHONES: len(entries)}
    for i, entry in enumerate(entries):
        if isinstance(entry, Error):
            layout[f"{i}.error-code"] = int(entry.code)
            layout[f"{i}.error-reason"] = entry.reason or ""
            continue
        names, refs = [], []
        for name, record in entry.items():
            if id(record) not in stored:
                stored[id(record)] = f"r{len(stored)}"
                bundle[stored[id(record)]] = record
            names.append(name)
            refs.append(stored[id(record)])
        layout[f"{i}.names"] = names
        layout[f"{i}.records"] = refs
    for name, record in (partial or {}).items():
        bundle[f"{keys.PARTIAL}/{name}"] = record
    bundle[keys.BUNDLE] = ConfigRecord(layout)
    return bundle


def options(bundle: RecordDict) -> ConfigRecord:
    """The bundle's layout, where :func:`pack`'s ``options`` are (read with ``.get``)."""
    return bundle.config_records[keys.BUNDLE]


def partial_of(bundle: RecordDict) -> RecordDict | None:
    """The partial sum :func:`pack` was given, or ``None``.

    >>> from flwr.app import MetricRecord
    >>> bundle = pack([Error(2, "x")], partial=RecordDict({"m": MetricRecord({"n": 3})}))
    >>> partial_of(bundle)["m"]["n"], partial_of(pack([]))
    (3, None)
    """
    prefix = f"{keys.PARTIAL}/"
    records = {k[len(prefix):]: r for k, r in bundle.items() if k.startswith(prefix)}
    return RecordDict(records) if records else None


def unpack(bundle: RecordDict) -> list[RecordDict | Error]:
    """Each phone's records (a RecordDict sharing the bundle's record objects) or its error,
    in the order :func:`pack` was given them."""
    layout = bundle.config_records[keys.BUNDLE]
    entries: list[RecordDict | Error] = []
    for i in range(int(layout[_PHONES])):
        if f"{i}.error-code" in layout:
            entries.append(
                Error(code=int(layout[f"{i}.error-code"]), reason=str(layout[f"{i}.error-reason"]))
            )
            continue
        names, refs = layout[f"{i}.names"], layout[f"{i}.records"]
        entries.append(RecordDict({name: bundle[ref] for name, ref in zip(names, refs)}))
    return entries
