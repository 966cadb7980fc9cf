"""Flash-flood scenarios: a seeded, timed stream of tickets built from real labelled text, with its ground truth.

A scenario file (YAML or JSON) describes background traffic and storms; `generate()` turns it into
`Planned` tickets: when to send (seconds from start), exactly what the engine sees, and the truth
(category, storm id or None, how the text was made) that stays on our side.

Storm tickets are reports of one intent: other dataset rows of that intent (rewordings), exact repeats of
an earlier storm ticket, and rows wrapped in customer-specific details (names, order numbers, amounts).
Each storm intent's rows are split: most feed the storm, the rest stay in the background pool, so a
background ticket never carries word-for-word the text of a storm ticket (which no engine could tell apart),
while same-intent paraphrases can still appear in the background, as in real traffic.

Rates are tickets/s, or a string "<f>x" meaning f times the capacity given to `generate()` (the bench
passes the embedding ceiling it measured), so "overload" means the same thing on any machine.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from routing_engine.resources import data_dir

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
NAMED_DATA = {"banking77": data_dir() / "banking77" / "train.csv"}  # shipped with the package (CC BY 4.0)

FIRST = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam", "Mona",
         "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
LAST = ["Garcia", "Smith", "Okafor", "Novak", "Khan", "Levi", "Moreau", "Chen", "Rossi", "Silva", "Kowalski",
        "Nguyen", "Müller", "Haddad", "Johansson", "Patel", "O'Brien", "Tanaka", "Dubois", "Ivanova"]
DETAILS = [
    "My name is {name}, customer number {cust}.",
    "Order #{order}.",
    "Reference {ref}, amount £{amount}.",
    "This is {name} (account ending {last4}).",
    "Transaction {ref} on {day}, {amount} EUR.",
    "Sent from my phone. {name}",
    "Account {cust}, card ending {last4}.",
]
URGENT_CUES = [("URGENT: ", ""), ("", " Please help, this is urgent!"), ("", " I need this fixed today."),
               ("", " Need help ASAP!!"), ("Emergency - ", "")]
CHANNELS = ["email", "chat", "web", "app", "phone"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@dataclass
class Storm:
    id: str
    intent: str | None = None      # None/"auto": chosen by the seed among intents with enough rows
    start_s: float = 10.0
    duration_s: float = 10.0
    rate: float | str = 100.0      # tickets/s or "<f>x" of capacity
    repeat_share: float = 0.2      # exact copies of an earlier ticket of this storm
    details_share: float = 0.3     # rows wrapped in customer-specific details
    storm_rows_share: float = 0.7  # share of the intent's rows reserved for the storm (the rest: background)


@dataclass
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    data: str = "banking77"        # a name in NAMED_DATA, or a CSV path with text,category columns
    duration_s: float = 30.0
    background_rate: float | str = 20.0
    details_share: float = 0.2     # background tickets with customer details
    urgent_share: float = 0.05     # tickets (any kind) with an urgency cue added
    storms: list[Storm] = field(default_factory=list)

    @property
    def relative(self) -> bool:
        return any(isinstance(x, str) for x in [self.background_rate, *(s.rate for s in self.storms)])


@dataclass
class Planned:
    at_s: float
    ticket: dict    # exactly what is sent (ticket.schema.json)
    truth: dict     # id, category, storm, kind, urgent_cue, row


def scenario_from_dict(d: dict) -> Scenario:
    d = dict(d)
    storms = [Storm(**s) for s in d.pop("storms", []) or []]
    bg = d.pop("background", None) or {}
    if "rate" in bg:
        d["background_rate"] = bg["rate"]
    if "details_share" in bg:
        d["details_share"] = bg["details_share"]
    return Scenario(storms=storms, **d)


def load_scenario(name_or_path: str) -> Scenario:
    """`single-storm` (a shipped file in bench/scenarios/) or a path to your own YAML/JSON file."""
    p = Path(name_or_path)
    if not p.exists():
        for ext in (".yaml", ".yml", ".json"):
            if (SCENARIOS / (name_or_path + ext)).exists():
                p = SCENARIOS / (name_or_path + ext)
                break
        else:
            names = sorted(x.stem for x in SCENARIOS.glob("*.y*ml"))
            raise SystemExit(f"no scenario {name_or_path!r}: give a file path or one of {', '.join(names)}")
    doc = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    doc.setdefault("name", p.stem)
    return scenario_from_dict(doc)


def load_rows(data: str) -> list[tuple[str, str]]:
    path = NAMED_DATA.get(data, Path(data))
    if not path.is_file():
        raise SystemExit(f"scenario data {data!r} not found ({path}): give a CSV with text,category columns")
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"].strip(), r["category"].strip()) for r in csv.DictReader(f) if r["text"].strip()]


def rate_of(rate: float | str, capacity: float | None) -> float:
    if isinstance(rate, str):
        if not rate.endswith("x"):
            return float(rate)
        if not capacity:
            raise ValueError(f"rate {rate!r} is relative to capacity, but no capacity was given")
        return float(rate[:-1]) * capacity
    return float(rate)


def _arrivals(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """Poisson arrivals in [start, end)."""
    out, t = [], start
    if rate <= 0:
        return out
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def _details(rng: random.Random) -> str:
    return rng.choice(DETAILS).format(
        name=f"{rng.choice(FIRST)} {rng.choice(LAST)}", cust=f"C{rng.randint(100000, 999999)}",
        order=f"{rng.choice('ABCDEFGH')}{rng.randint(10000, 99999)}", ref=f"TX-{rng.randint(10000, 99999)}",
        amount=f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}", last4=f"{rng.randint(0, 9999):04d}",
        day=rng.choice(DAYS))


def expected_count(sc: Scenario, capacity: float | None = None) -> float:
    n = rate_of(sc.background_rate, capacity) * sc.duration_s
    return n + sum(rate_of(s.rate, capacity) * s.duration_s for s in sc.storms)


def scaled(sc: Scenario, time_factor: float) -> Scenario:
    """Same traffic shape stretched in time by `time_factor` (rates unchanged, so counts scale with it)."""
    from dataclasses import replace

    return replace(sc, duration_s=sc.duration_s * time_factor,
                   storms=[replace(s, start_s=s.start_s * time_factor, duration_s=s.duration_s * time_factor)
                           for s in sc.storms])


def stretched(sc: Scenario, rows: list[tuple[str, str]], tickets: int, capacity: float | None = None,
              speed: float = 1.0) -> tuple[list[Planned], Scenario]:
    """Exactly `tickets` tickets of the scenario's shape: stretched in time (rates unchanged) until it holds that
    many, then cut. Returns them and the stretched scenario (its storms carry the intents drawn)."""
    factor = tickets / max(1.0, expected_count(sc, capacity) * speed) * 1.1
    for _ in range(5):
        longer = scaled(sc, factor)
        planned = generate(longer, rows, capacity, speed, limit=tickets)
        if len(planned) >= tickets:
            break
        factor *= 1.3
    return planned, longer


def generate(sc: Scenario, rows: list[tuple[str, str]], capacity: float | None = None,
             speed: float = 1.0, limit: int | None = None) -> list[Planned]:
    """The scenario as a time-ordered list. `speed` multiplies every rate (and compresses time);
    `limit` keeps the first N tickets."""
    rng = random.Random(sc.seed)
    by_intent: dict[str, list[str]] = {}
    for text, label in rows:
        by_intent.setdefault(label, []).append(text)
    pools: dict[str, list[str]] = {}
    used: set[str] = set()
    for st in sc.storms:
        intent = st.intent
        if not intent or intent == "auto":
            choices = sorted(i for i, t in by_intent.items() if len(t) >= 20 and i not in used) or \
                sorted(i for i in by_intent if i not in used)
            intent = rng.choice(choices)
        if intent not in by_intent:
            raise SystemExit(f"storm {st.id}: intent {intent!r} not in the data")
        if intent in used:
            raise SystemExit(f"storm {st.id}: intent {intent!r} already used by another storm")
        used.add(intent)
        texts = sorted(set(by_intent[intent]))
        rng.shuffle(texts)
        k = max(1, int(round(len(texts) * st.storm_rows_share)))
        pools[st.id] = texts[:k]
        by_intent[intent] = [t for t in by_intent[intent] if t not in set(texts[:k])] or by_intent[intent]
        st.intent = intent
    background = [(t, label) for label, ts in by_intent.items() for t in ts]

    events: list[tuple[float, str | None]] = []
    events += [(t, None) for t in _arrivals(rng, rate_of(sc.background_rate, capacity) * speed, 0.0,
                                            sc.duration_s / speed)]
    for st in sc.storms:
        start = st.start_s / speed
        events += [(t, st.id) for t in _arrivals(rng, rate_of(st.rate, capacity) * speed, start,
                                                 start + st.duration_s / speed)]
    events.sort(key=lambda e: e[0])
    if limit is not None:
        events = events[:limit]

    storms = {s.id: s for s in sc.storms}
    sent: dict[str, list[tuple[str, str, bool]]] = {s.id: [] for s in sc.storms}
    out = []
    for i, (at, sid) in enumerate(events):
        tid = f"fl-{i:06d}"
        if sid is None:
            base, label = rng.choice(background)
            kind = "background"
            body = f"{base} {_details(rng)}" if rng.random() < sc.details_share else base
        else:
            st = storms[sid]
            label = st.intent
            u = rng.random()
            if sent[sid] and u < st.repeat_share:
                kind, (base, body, cue) = "repeat", rng.choice(sent[sid])
            elif u < st.repeat_share + st.details_share:
                kind, base = "details", rng.choice(pools[sid])
                body = f"{base} {_details(rng)}"
            else:
                kind, base = "reworded", rng.choice(pools[sid])
                body = base
        if kind != "repeat":
            cue = rng.random() < sc.urgent_share
            if cue:
                prefix, suffix = rng.choice(URGENT_CUES)
                body = f"{prefix}{body}{suffix}"
            if sid is not None:
                sent[sid].append((base, body, cue))
        ticket = {"id": tid, "body": body, "customer": f"cust-{rng.randint(1, 50_000)}",
                  "channel": rng.choice(CHANNELS)}
        truth = {"id": tid, "category": label, "storm": sid, "kind": kind, "urgent_cue": cue, "row": base}
        out.append(Planned(at, ticket, truth))
    return out


def write_files(planned: list[Planned], tickets_path: Path, truth_path: Path) -> None:
    """The stream as sent (with its send time) and the truth, in two JSONL side files."""
    tickets_path.parent.mkdir(parents=True, exist_ok=True)
    with tickets_path.open("w") as f:
        for p in planned:
            f.write(json.dumps({"at_s": round(p.at_s, 4), "ticket": p.ticket}) + "\n")
    with truth_path.open("w") as f:
        for p in planned:
            f.write(json.dumps(p.truth) + "\n")
