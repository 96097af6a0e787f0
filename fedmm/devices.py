"""Device profiles: each client's compute speed, bandwidths and availability over simulated time.

Config key ``devices``: ``off`` (default: no clock, every client equally fast and always online),
``model`` (drawn, seeded, from :class:`DeviceParams`, the ``devices.<param>`` keys), or the path of
a trace file (CSV, or Parquet with pyarrow installed; :func:`load_trace`). docs/devices.md has the
model's sources and the trace format.

A profile is three numbers per client and a list of online intervals:

* ``compute_ms_per_sample``: milliseconds to train one sample of the full multimodal model;
  lognormal, median 13.6 ms and sigma 0.6 by default: FedScale's lognormal compute model
  (``0.005 s x LogNormal(1, 0.6)`` per trained sample, Lai et al., ICML 2022,
  ``fedscale/cloud/internal/client_metadata.py``), drawn once per client here.
* ``down_kbps``: lognormal, median 6,000 kbit/s, sigma 1.1: FedScale's device trace takes its
  bandwidths from MobiPerf's WiFi measurements; its median is reported near 6 Mbit/s with about a
  quarter of the devices below 3 Mbit/s, which sigma 1.1 reproduces.
* ``up_kbps = down_kbps x r``, ``r`` lognormal with median 0.71 and sigma 0.5: the median
  upload/download ratio of FLASH's measured users (Yang et al., WWW 2021, ``models/speed_distri.json``).
* availability: an alternating on/off process with exponential on and off periods (mean online
  period ``mean-online-s``, share of time online ``online-share``), over a ``period-s`` long
  window that repeats (one week: the length of FLASH's 136k-user trace, which FedScale replays the
  same way); the process starts in its stationary state. Both values are assumptions to set from a
  trace; ``online-share = 1`` (default) keeps every client online.

Every draw is clipped to the distribution's 1st-99th percentile, so no device is absurdly slow.

Why one module of this size: the parametric device model and the trace files, with the row-by-row
messages a bad trace gets.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np

from fedmm.params import POSITIVE, Checked, Interval

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("fedmm")

#: ``devices`` values that are not a trace file's path.
DEVICES_OFF = "off"
DEVICES_MODEL = "model"
#: Columns of a trace file: the device (required) and one online interval per row (optional).
DEVICE_COLUMNS = ("client", "compute_ms_per_sample", "down_kbps", "up_kbps")
INTERVAL_COLUMNS = ("online_start_s", "online_end_s")
#: z of the 99th percentile: draws are clipped to median x exp(+-Z99 sigma).
Z99 = 2.3263478740408408
#: Salt of the profile generator's seed (the run's seed comes first).
SEED_SALT = 23


@dataclass
class DeviceParams(Checked):
    """The parametric device model (``devices = "model"``), keys ``devices.<param>``; the period
    also applies to a trace's intervals.

    Parameters
    ----------
    compute_ms:
        median milliseconds to train one sample of the full multimodal model (FedScale's lognormal
        model: 13.6)
    compute_sigma:
        sigma of ln(compute ms) (FedScale: 0.6; 0 = every device equally fast)
    down_kbps:
        median download bandwidth in kbit/s (FedScale's MobiPerf WiFi trace: about 6000)
    down_sigma:
        sigma of ln(download kbit/s) (1.1: a quarter of the devices below 3 Mbit/s)
    up_ratio:
        median upload/download bandwidth ratio (FLASH's measured users: 0.71)
    up_ratio_sigma:
        sigma of ln(upload/download ratio) (0 = the ratio is fixed)
    online_share:
        long-run share of time a client is online (1 = always online)
    mean_online_s:
        mean length of an online period in seconds (exponential)
    period_s:
        seconds after which availability repeats (one week, as FLASH's trace); a trace's online
        intervals must lie in [0, period-s]
    """

    compute_ms: Annotated[float, POSITIVE] = 13.6
    compute_sigma: Annotated[float, Interval(float, 0.0, 3.0, closed="both")] = 0.6
    down_kbps: Annotated[float, POSITIVE] = 6000.0
    down_sigma: Annotated[float, Interval(float, 0.0, 3.0, closed="both")] = 1.1
    up_ratio: Annotated[float, POSITIVE] = 0.71
    up_ratio_sigma: Annotated[float, Interval(float, 0.0, 3.0, closed="both")] = 0.5
    online_share: Annotated[float, Interval(float, 0.0, 1.0, closed="right")] = 1.0
    mean_online_s: Annotated[float, POSITIVE] = 3600.0
    period_s: Annotated[float, POSITIVE] = 604800.0


@dataclass
class Profiles:
    """Every client's device, by client (partition) id ``0 .. n-1``.

    Parameters
    ----------
    compute_ms_per_sample, down_kbps, up_kbps:
        One positive value per client (milliseconds per sample of the full model, kbit/s, kbit/s).
    period_s:
        Seconds after which availability repeats.
    starts, ends, offsets:
        Online intervals ``[starts[j], ends[j])`` (seconds within the period) of client ``c`` for
        ``j in offsets[c] .. offsets[c+1]-1``, sorted and disjoint; ``None``: every client is always
        online.
    source:
        Where the profiles come from (``model`` or the trace file's path), for messages.
    """

    compute_ms_per_sample: np.ndarray
    down_kbps: np.ndarray
    up_kbps: np.ndarray
    period_s: float
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    offsets: np.ndarray | None = None
    source: str = DEVICES_MODEL

    def __post_init__(self) -> None:
        if self.starts is not None:
            n = len(self.compute_ms_per_sample)
            owner = np.repeat(np.arange(n, dtype=np.float64), np.diff(self.offsets))
            # one sorted key line over all clients: client c's intervals live in [c P, (c + 1) P)
            self._gstarts = self.starts + owner * self.period_s
            self._gends = self.ends + owner * self.period_s
            self._owner = owner.astype(np.int64)
            first = self.offsets[:-1]
            has = np.diff(self.offsets) > 0
            # a client online at the period's end and at its start stays online across the wrap
            self._wrap = np.zeros(n)
            last = self.offsets[1:] - 1
            ok = (
                has
                & (self.starts[np.minimum(first, len(self.starts) - 1)] <= 0.0)
                & (self.ends[np.maximum(last, 0)] >= self.period_s)
            )
            whole = ok & (first == last)  # one interval over the whole period: always online
            self._wrap[ok] = self.ends[first[ok]]
            self._wrap[whole] = np.inf

    def __len__(self) -> int:
        return len(self.compute_ms_per_sample)

    @property
    def always_online(self) -> bool:
        return self.starts is None

    def online_for(self, clients: np.ndarray, at: float | np.ndarray) -> np.ndarray:
        """Seconds each of ``clients`` stays online from simulated time ``at`` on (``inf``: for
        good; ``0``: offline at ``at``); ``at`` is one time or one per client."""
        clients = np.asarray(clients, dtype=np.int64)
        if self.starts is None:
            return np.full(clients.shape, np.inf)
        tau = np.fmod(np.asarray(at, dtype=np.float64), self.period_s)
        key = clients * self.period_s + tau
        idx = np.searchsorted(self._gstarts, key, side="right") - 1
        safe = np.maximum(idx, 0)
        inside = (idx >= 0) & (self._owner[safe] == clients) & (self._gends[safe] > key)
        left = np.where(inside, self._gends[safe] - key, 0.0)
        wraps = inside & (self.ends[safe] >= self.period_s)
        left[wraps] += self._wrap[clients[wraps]]
        return left

    def online(self, clients: np.ndarray, at: float | np.ndarray) -> np.ndarray:
        """Whether each of ``clients`` is online at simulated time ``at``."""
        return self.online_for(clients, at) > 0

    def next_online(self, at: float) -> float:
        """The earliest simulated time at or after ``at`` at which some client is online."""
        if self.starts is None or self.online(np.arange(len(self)), at).any():
            return float(at)
        base = float(at) - math.fmod(float(at), self.period_s)
        tau = float(at) - base
        later = self.starts[self.starts >= tau]
        return base + float(later.min()) if later.size else base + self.period_s + float(self.starts.min())

    def digest(self) -> str:
        """SHA-256 of every array (a resumed run checks that it rebuilt the same devices); computed
        once (profiles do not change during a run; every checkpoint records it)."""
        if getattr(self, "_digest", None) is None:
            self._digest = self._compute_digest()
        return self._digest

    def _compute_digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.compute_ms_per_sample, self.down_kbps, self.up_kbps, self.starts, self.ends, self.offsets):
            h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
        h.update(repr(float(self.period_s)).encode())
        return h.hexdigest()


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    """``n`` lognormal draws clipped to their 1st-99th percentile."""
    draws = median * np.exp(sigma * rng.standard_normal(n))
    return np.clip(draws, median * math.exp(-Z99 * sigma), median * math.exp(Z99 * sigma))


def draw_profiles(num_clients: int, seed: int, params: DeviceParams | None = None) -> Profiles:
    """Profiles of ``num_clients`` clients from the parametric model (module docstring).

    Parameters
    ----------
    num_clients:
        Clients of the federation (ids ``0 .. num_clients - 1``).
    seed:
        The run's seed: the same seed gives every policy the same devices.
    params:
        The model's parameters; ``None``: the defaults.
    """
    p = params or DeviceParams()
    rng = np.random.default_rng([seed, SEED_SALT])
    compute = _lognormal(rng, p.compute_ms, p.compute_sigma, num_clients)
    down = _lognormal(rng, p.down_kbps, p.down_sigma, num_clients)
    up = down * _lognormal(rng, p.up_ratio, p.up_ratio_sigma, num_clients)
    if p.online_share >= 1.0:
        return Profiles(compute, down, up, p.period_s)
    starts, ends, offsets = _draw_availability(
        np.random.default_rng([seed, SEED_SALT, 1]), num_clients, p.online_share, p.mean_online_s, p.period_s
    )
    return Profiles(compute, down, up, p.period_s, starts, ends, offsets)


def _draw_availability(
    rng: np.random.Generator, n: int, share: float, mean_on: float, period: float, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Online intervals of an alternating exponential on/off process, stationary at time 0, cut at
    ``period`` (CSR arrays: starts, ends, offsets)."""
    mean_off = mean_on * (1.0 - share) / share
    starts, ends, counts = [], [], []
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        pairs = int(math.ceil(period / (mean_on + mean_off) * 2)) + 8
        while True:
            on = rng.exponential(mean_on, (m, pairs))
            off = rng.exponential(mean_off, (m, pairs))
            first_on = rng.random(m) < share
            # durations alternate; a client that starts offline begins with an off period
            seq = np.empty((m, 2 * pairs))
            seq[:, 0::2] = np.where(first_on[:, None], on, off)
            seq[:, 1::2] = np.where(first_on[:, None], off, on)
            bounds = np.cumsum(seq, axis=1)
            if (bounds[:, -1] >= period).all():
                break
            pairs *= 2
        zero = np.zeros((m, 1))
        edges = np.concatenate([zero, bounds], axis=1)  # edges[k] .. edges[k+1] is segment k
        seg_on = np.zeros((m, 2 * pairs), dtype=bool)
        seg_on[:, 0::2] = first_on[:, None]
        seg_on[:, 1::2] = ~first_on[:, None]
        s, e = edges[:, :-1], np.minimum(edges[:, 1:], period)
        keep = seg_on & (s < period) & (e > s)
        starts.append(s[keep])
        ends.append(e[keep])
        counts.append(keep.sum(axis=1))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return np.concatenate(starts), np.concatenate(ends), offsets


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file (and the row)."""


def load_trace(path: str | Path, num_clients: int, period_s: float = DeviceParams.period_s) -> Profiles:
    """Profiles from a trace file (CSV, or Parquet with pyarrow installed).

    Columns ``client`` (an integer key), ``compute_ms_per_sample``, ``down_kbps``, ``up_kbps``
    (positive numbers), and optionally ``online_start_s``, ``online_end_s``: then every row is one
    online interval of its client (its device values repeated on each of its rows), within
    ``[0, period_s]``, a client's intervals disjoint; without them every client is always online.
    fedmm client ``p`` takes the trace's ``p mod K``-th key in sorted order (``K`` keys; FedScale
    maps its traces the same way).

    Parameters
    ----------
    path:
        The trace file.
    num_clients:
        Clients of the federation.
    period_s:
        Seconds after which the availability repeats.

    Raises
    ------
    TraceError
        The file is missing or unreadable, lacks a column, or has a bad row (named: ``row i``
        counts data rows from 1, ``line i + 1`` of a CSV file with its header).
    """
    import pandas as pd

    path = Path(path).expanduser()
    name = str(path)
    if not path.is_file():
        raise TraceError(
            f"devices trace file {name!r} does not exist; set config key 'devices' to 'off', "
            "'model' or the path of a CSV/Parquet trace (docs/devices.md)"
        )
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, skipinitialspace=True)
    except ImportError as err:
        raise TraceError(
            f"devices trace file {name!r}: reading Parquet needs pyarrow ({err}); "
            "pip install pyarrow, or save the trace as CSV"
        ) from None
    except Exception as err:  # pandas raises many kinds for a damaged file
        raise TraceError(f"devices trace file {name!r} cannot be read: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in DEVICE_COLUMNS if c not in table.columns]
    has_intervals = [c for c in INTERVAL_COLUMNS if c in table.columns]
    if missing or len(has_intervals) == 1:
        need = [*missing, *(c for c in INTERVAL_COLUMNS if has_intervals and c not in table.columns)]
        raise TraceError(
            f"devices trace file {name!r} lacks column(s) {need}; it has {list(table.columns)} "
            f"(needed: {list(DEVICE_COLUMNS)}, optionally {list(INTERVAL_COLUMNS)})"
        )
    if table.empty:
        raise TraceError(f"devices trace file {name!r} has no rows")
    csv = path.suffix.lower() not in (".parquet", ".pq")

    def bad(row: int, why: str) -> TraceError:
        where = f"row {row + 1}" + (f" (line {row + 2})" if csv else "")
        return TraceError(f"devices trace file {name!r}, {where}: {why}")

    columns = [*DEVICE_COLUMNS, *has_intervals]
    values = {}
    for c in columns:
        raw = table[c]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        wrong = ~np.isfinite(num)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            value = raw.iloc[i]
            raise bad(i, f"{c} is empty" if pd.isna(value) else f"{c} = {str(value)!r} is not a finite number")
        values[c] = num
    checks = [(values["client"] != np.round(values["client"]), "client must be an integer key")]
    checks += [(values[c] <= 0, f"{c} must be > 0") for c in DEVICE_COLUMNS[1:]]
    if has_intervals:
        s, e = values["online_start_s"], values["online_end_s"]
        checks += [
            (s < 0, "online_start_s must be >= 0"),
            (e <= s, "online_end_s must be > online_start_s"),
            (e > period_s, f"online_end_s must be <= the period, devices.period-s = {period_s:g}"),
        ]
    for mask, why in checks:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            shown = ", ".join(f"{c}={table[c].iloc[i]}" for c in columns)
            raise bad(i, f"{why} (got {shown})")
    keys = values["client"].astype(np.int64)
    order = np.lexsort((values["online_start_s"], keys) if has_intervals else (keys,))
    k = keys[order]
    first = np.concatenate([[True], k[1:] != k[:-1]])
    group = np.cumsum(first) - 1
    for c in DEVICE_COLUMNS[1:]:
        v = values[c][order]
        differs = v != v[first][group]
        if differs.any():
            i = int(order[np.flatnonzero(differs)[0]])
            raise bad(
                i,
                f"{c} differs from the value on client {keys[i]}'s first row; a client's device "
                "values must be the same on all its rows",
            )
    if has_intervals:
        s, e = values["online_start_s"][order], values["online_end_s"][order]
        overlap = ~first & (s < np.concatenate([[np.inf], e[:-1]]))
        if overlap.any():
            i = int(order[np.flatnonzero(overlap)[0]])
            raise bad(i, f"client {keys[i]}'s online interval overlaps its previous one")
    unique = k[first]
    if len(unique) < num_clients:
        log.info(
            "devices trace %s has %d clients for %d: client p takes the trace's (p mod %d)-th key",
            name,
            len(unique),
            num_clients,
            len(unique),
        )
    pick = np.arange(num_clients) % len(unique)  # client p -> p-th key (cyclic), keys sorted
    firsts = np.flatnonzero(first)
    dev = {c: values[c][order][firsts][pick] for c in DEVICE_COLUMNS[1:]}
    if not has_intervals:
        return Profiles(dev["compute_ms_per_sample"], dev["down_kbps"], dev["up_kbps"], period_s, source=name)
    counts_by_key = np.diff(np.concatenate([firsts, [len(k)]]))
    counts = counts_by_key[pick]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = (
        np.concatenate([np.arange(firsts[g], firsts[g] + counts_by_key[g]) for g in pick])
        if num_clients
        else np.zeros(0, dtype=np.int64)
    )
    return Profiles(
        dev["compute_ms_per_sample"], dev["down_kbps"], dev["up_kbps"], period_s, s[rows], e[rows], offsets, source=name
    )


def trace_table(profiles: Profiles) -> pd.DataFrame:
    """``profiles`` as a trace table (:func:`load_trace`'s columns; keys are the client ids): one row
    per online interval, or one row per client when every client is always online.

    Parameters
    ----------
    profiles:
        Drawn or loaded profiles.
    """
    import pandas as pd

    n = len(profiles)
    device = {
        "client": np.arange(n),
        "compute_ms_per_sample": profiles.compute_ms_per_sample,
        "down_kbps": profiles.down_kbps,
        "up_kbps": profiles.up_kbps,
    }
    if profiles.always_online:
        return pd.DataFrame(device)
    per = np.diff(profiles.offsets)
    rows = {k: np.repeat(v, per) for k, v in device.items()}
    return pd.DataFrame({**rows, "online_start_s": profiles.starts, "online_end_s": profiles.ends})


def write_trace(profiles: Profiles, path: str | Path) -> None:
    """Write ``profiles`` as a CSV trace file (:func:`trace_table`; read back by :func:`load_trace`
    with the same ``period_s``)."""
    from fedmm.files import atomic_write

    atomic_write(Path(path), trace_table(profiles).to_csv(index=False, float_format="%.17g"))


def build_profiles(devices: str, num_clients: int, seed: int, params: DeviceParams | None = None) -> Profiles | None:
    """The run's profiles for config key ``devices``: ``None`` when ``off``, drawn for ``model``,
    else loaded from the trace file it names.

    Parameters
    ----------
    devices:
        ``off``, ``model`` or a trace file's path.
    num_clients:
        Clients of the federation.
    seed:
        The run's seed.
    params:
        The ``devices.<param>`` values.
    """
    if devices == DEVICES_OFF:
        return None
    params = params or DeviceParams()
    if devices == DEVICES_MODEL:
        return draw_profiles(num_clients, seed, params)
    return load_trace(devices, num_clients, params.period_s)
