"""The synthetic hospital's generative model (pure: a seed in, data out; no files, no clock).

One population of patients lives through a 90-day history window and then `days` days of stream.
Each patient has a sex, an age and a creatinine baseline that depends on both (and on chronic
kidney disease); admissions arrive at hospital hours, stays last days to weeks, creatinine is
drawn at admission and then every day or two at lab hours. Each admission may bring one acute
kidney injury: the first result after the injury shows a sudden rise relative to the patient's
recent results, later results recover towards the baseline. Non-AKI noise (a bad sample,
dehydration, day-to-day variation) makes some normal results rise too. docs/hospital.md describes
the model and its numbers.

Every patient draws from its own `random.Random`, seeded from (seed, role, index), so the output
is a pure function of the arguments.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from . import messages as hl7_messages
from ..detect.nhs import nhs_stage
from ..timeutil import DAY, HOUR, parse_hl7_time

HISTORY_DAYS = 90
STREAM_START = parse_hl7_time("20240401000000")
NHS_MIN_STAGE = 2           # the hospital's simplified NHS variant (contract §7)
NHS_EPISODE_DAYS = 90       # the NHS reference pages once per episode

# Relative activity per hour of day (0..23): admissions and discharges follow the working day,
# blood is drawn on the morning round and analysed through the afternoon.
ADMIT_HOURS = (1, 1, 1, 2, 3, 6, 11, 11, 12, 11, 11, 12, 12, 11, 11, 11, 11, 10, 9, 3, 1, 1, 1, 1)
LAB_HOURS = (1, 1, 1, 2, 3, 9, 13, 14, 15, 15, 15, 17, 17, 18, 20, 22, 25, 26, 19, 7, 4, 3, 3, 2)

ADMISSIONS_PER_YEAR = 1.1   # per patient, Poisson
OUTPATIENT_PER_YEAR = 2.0   # tests outside hospital (seen only in history.csv)
MEAN_TEST_GAP_H = 50.0      # between inpatient tests
MEASUREMENT_SD = 0.07       # log-scale noise of one result
SPIKE_P = 0.01              # chance a result is a transient non-AKI rise (bad sample, dehydration)
P_AKI_BASE = 0.05           # per admission, rising with age and CKD
P_COMMUNITY = 0.2           # share of AKIs already present at admission


@dataclass(slots=True)
class Person:
    mrn: str
    sex: str           # "M" / "F"
    birth: int         # seconds, midnight of the date of birth
    name: str
    baseline: float    # µmol/L
    ckd: bool


@dataclass(slots=True)
class Life:
    """One patient's admissions and results over a window, with the AKI time if there is one."""

    person: Person
    stays: list[tuple[int, int]] = field(default_factory=list)     # (admit, discharge)
    results: list[tuple[int, float]] = field(default_factory=list)  # ascending times
    aki_time: int | None = None


@dataclass(slots=True)
class GeneratedHospital:
    messages: list[bytes]                        # HL7 payloads, stream order, no framing
    history: dict[str, list[tuple[int, float]]]  # mrn -> results in the 90 days before the stream
    aki_rows: list[tuple[str, int, bool, bool]]  # (mrn, time, aki, nhs), time order
    cohort: list[tuple[int, str, bool, list[tuple[int, float]]]]  # (age, sex, aki, results)
    stream_start: int


FIRST = ("ADA", "ALFIE", "AMIRA", "ARTHUR", "BEATRICE", "CALLUM", "CHLOE", "DANIEL", "EDITH",
         "ELLIS", "FREYA", "GEORGE", "HANNAH", "HARRY", "ISLA", "JACOB", "JUNE", "KAI", "LEO",
         "LILY", "MAYA", "NOAH", "OLIVIA", "OSCAR", "PRIYA", "RUBY", "SAM", "TEDDY", "ZARA")
LAST = ("AHMED", "BAKER", "BROWN", "CLARKE", "DAVIES", "EVANS", "GREEN", "HALL", "HUGHES",
        "JONES", "KHAN", "LEWIS", "MORRIS", "PATEL", "PRICE", "ROBERTS", "SMITH", "TAYLOR",
        "THOMAS", "WALKER", "WHITE", "WILSON", "WOOD", "WRIGHT", "YOUNG")


def _rng(seed: int, role: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{role}:{index}")


def expected_baseline(age: float, sex: str) -> float:
    """Median creatinine (µmol/L) of a healthy person: low in children (muscle mass), higher in
    men than women, rising slowly after 60 as kidney function declines."""
    if age < 18:
        kid = 30.0 + 2.5 * age
        return kid if sex == "F" else kid + (5.0 if age > 12 else 0.0)
    adult = 85.0 if sex == "M" else 66.0
    return adult * (1.0 + 0.006 * max(0.0, age - 60.0))


def _person(rng: random.Random, mrn: str, at: int) -> Person:
    sex = rng.choice("MF")
    age = min(98.0, rng.choice((rng.uniform(0, 18), rng.uniform(18, 60), rng.uniform(18, 98),
                                rng.uniform(55, 98))))
    ckd = rng.random() < (0.02 + 0.12 * max(0.0, age - 50.0) / 48.0)
    base = expected_baseline(age, sex) * math.exp(rng.gauss(0.0, 0.13))
    if ckd:
        base *= rng.uniform(1.6, 3.2)
    birth = (at - int(age * 365.25 * DAY)) // DAY * DAY
    return Person(mrn, sex, birth, f"{rng.choice(FIRST)} {rng.choice(LAST)}", base, ckd)


def _mrn(rng: random.Random, taken: set[str]) -> str:
    while True:
        if rng.random() < 0.9:
            mrn = str(rng.randrange(100_000_000, 200_000_000))
        else:
            width = rng.randint(3, 8)
            mrn = str(rng.randrange(10 ** (width - 1), 10 ** width))
        if mrn not in taken:
            taken.add(mrn)
            return mrn


def _next_time(rng: random.Random, after: int, mean_gap_h: float, weights: tuple[int, ...]) -> int:
    """The next event (on a whole minute) of a Poisson process with a mean gap of `mean_gap_h`
    hours, shaped by hourly weights: candidates are thinned by their hour's relative activity."""
    top = max(weights)
    raw_mean = mean_gap_h * HOUR * sum(weights) / (24 * top)
    t = after
    while True:
        t += int(rng.expovariate(1.0 / raw_mean)) + 60
        if rng.random() * top < weights[(t % DAY) // HOUR]:
            return t // 60 * 60


def _stay_length(rng: random.Random, age: float) -> int:
    days = rng.lognormvariate(math.log(3.0 + age / 30.0), 0.75)
    return int(min(days, 120.0) * DAY)


def _aki_chance(p: Person, age: float) -> float:
    return P_AKI_BASE * (1.0 + max(0.0, age - 40.0) / 30.0) * (2.0 if p.ckd else 1.0)


def _aki_factor(rng: random.Random) -> float:
    """The rise of the first result after the injury: a fifth are KDIGO stage 1 (×1.5–2)."""
    return rng.uniform(1.55, 2.0) if rng.random() < 0.2 else rng.uniform(2.0, 4.0)


def live(rng: random.Random, person: Person, start: int, end: int, aki_from: int,
         force_aki: bool = False) -> Life:
    """Simulate admissions and results in [start, end). An injury may happen only at or after
    `aki_from` (at most one); `force_aki` makes the first admission after `aki_from` have one."""
    life = Life(person)
    age0 = (start - person.birth) / (365.25 * DAY)
    # Start the admissions early enough that some stays are under way at `start`.
    t = start - 130 * DAY
    episodes: list[tuple[int, int, bool]] = []
    claimed = False   # at most one injury
    while True:
        t = _next_time(rng, t, 365 * 24 / ADMISSIONS_PER_YEAR, ADMIT_HOURS)
        if t >= end:
            break
        stay = _stay_length(rng, age0)
        discharge = _next_time(rng, t + stay, 2.0, ADMIT_HOURS)
        injured = (not claimed and t >= aki_from
                   and (force_aki or rng.random() < _aki_chance(person, age0)))
        episodes.append((t, discharge, injured))
        claimed = claimed or injured
        t = discharge
    if force_aki and not claimed:
        # No admission came by itself: add one (cohort AKI rows always have their injury).
        admit = _next_time(rng, aki_from + int(rng.uniform(0, max(DAY, end - aki_from - 20 * DAY))),
                           1.0, ADMIT_HOURS)
        episodes.append((admit, admit + _stay_length(rng, age0), True))
        episodes.sort()

    tests: list[tuple[int, float, int | None]] = []   # (time, drift factor, injury time)
    o = start
    while True:
        o = _next_time(rng, o, 365 * 24 / OUTPATIENT_PER_YEAR, LAB_HOURS)
        if o >= end:
            break
        if not any(a <= o < d for a, d, _ in episodes):
            tests.append((o, 1.0, None))
    for admit, discharge, injured in episodes:
        if discharge <= start:
            continue
        life.stays.append((admit, discharge))
        first = _next_time(rng, admit, 2.0, LAB_HOURS)
        times = []
        s = first
        while s < discharge and s < end:
            if s >= start:
                times.append(s)
            s = _next_time(rng, s, MEAN_TEST_GAP_H, LAB_HOURS)
        injury = None
        if injured and times:
            if rng.random() < P_COMMUNITY:
                injury = admit - 1                      # came in with it: the first test shows it
            elif len(times) > 1:
                injury = rng.randrange(times[0] + 1, times[-1])
        tests.extend((s, 1.0, injury) for s in times)
    tests.sort(key=lambda x: x[0])

    factor = 0.0
    for s, _, injury in tests:
        m = 1.0
        if injury is not None and s > injury:
            if life.aki_time is None:
                life.aki_time = s
                factor = _aki_factor(rng)
            # Peak for about a day, then recovery with a half-life of about three days.
            since = max(0.0, (s - life.aki_time) / DAY - 1.0)
            m = 1.0 + (factor - 1.0) * 0.5 ** (since / 3.0)
        elif rng.random() < SPIKE_P:
            m = rng.uniform(1.6, 2.3) if rng.random() < 0.15 else rng.uniform(1.2, 1.6)
        value = person.baseline * m * math.exp(rng.gauss(0.0, MEASUREMENT_SD))
        life.results.append((s, value))
    return life


def nhs_reference(history: dict[str, list[tuple[int, float]]],
                  results: list[tuple[int, str, float]],
                  aki_times: dict[str, int]) -> list[tuple[str, int, bool, bool]]:
    """aki.csv rows: every AKI (with whether the NHS variant flags that very result), plus the
    NHS variant's false positives: flags at other times that open an NHS episode."""
    seen = {m: ([t for t, _ in r], [v for _, v in r]) for m, r in history.items()}
    rows = []
    episode: dict[str, int] = {}
    for t, mrn, v in results:
        times, values = seen.setdefault(mrn, ([], []))
        flagged = nhs_stage(times, values, t, v).stage >= NHS_MIN_STAGE
        times.append(t)
        values.append(v)
        is_aki = aki_times.get(mrn) == t
        if flagged:
            opens = mrn not in episode or t - episode[mrn] >= NHS_EPISODE_DAYS * DAY
            if opens:
                episode[mrn] = t
            if opens and not is_aki:
                rows.append((mrn, t, False, True))
        if is_aki:
            rows.append((mrn, t, True, flagged))
    return rows


def generate(days: int, patients: int, seed: int, cohort_size: int = 4000) -> GeneratedHospital:
    start = STREAM_START
    end = start + days * DAY
    hist_start = start - HISTORY_DAYS * DAY
    taken: set[str] = set()
    lives = []
    for i in range(patients):
        rng = _rng(seed, "patient", i)
        person = _person(rng, _mrn(rng, taken), hist_start)
        lives.append(live(rng, person, hist_start, end, aki_from=start))

    history: dict[str, list[tuple[int, float]]] = {}
    events: list[tuple[int, int, str, bytes]] = []   # (time, kind order, mrn, payload)
    initial: list[tuple[int, bytes]] = []
    results: list[tuple[int, str, float]] = []
    aki_times: dict[str, int] = {}
    for life in lives:
        p = life.person
        past = [(t, v) for t, v in life.results if t < start]
        if past:
            history[p.mrn] = past
        for admit, discharge in life.stays:
            if discharge <= start:
                continue
            admission = hl7_messages.admission(admit, p.mrn, p.name, p.birth, p.sex)
            if admit < start:
                initial.append((admit, admission))
            elif admit < end:
                events.append((admit, 0, p.mrn, admission))
            if discharge < end:
                events.append((discharge, 2, p.mrn, hl7_messages.discharge(discharge, p.mrn)))
        for t, v in life.results:
            if t >= start:
                events.append((t, 1, p.mrn, hl7_messages.result(t, p.mrn, v)))
                results.append((t, p.mrn, v))
        if life.aki_time is not None:
            aki_times[p.mrn] = life.aki_time
    initial.sort(key=lambda x: x[0])
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    results.sort(key=lambda r: (r[0], r[1]))
    messages = [m for _, m in initial] + [e[3] for e in events]
    return GeneratedHospital(
        messages=messages,
        history=history,
        aki_rows=nhs_reference(history, results, aki_times),
        cohort=make_cohort(seed, cohort_size, hist_start),
        stream_start=start,
    )


def make_cohort(seed: int, size: int, start: int, aki_share: float = 0.2
                ) -> list[tuple[int, str, bool, list[tuple[int, float]]]]:
    """A labelled cohort (contract §6) from another hospital of the same model: people live a
    90-day history and a year of stream; an AKI row holds a patient's results up to the AKI time
    (the point of diagnosis), any other row a patient's results up to a stream result drawn at
    random among all non-AKI stream results, so the rows look like the results a detector
    judges (first results with nothing before them included)."""
    rng = _rng(seed, "cohort-draw", 0)
    stream_start = start + HISTORY_DAYS * DAY
    want_aki = round(size * aki_share)
    taken: set[str] = set()
    positives, lives = [], []
    i = 0
    while len(positives) < want_aki and i < 50 * size + 1000:
        prng = _rng(seed, "cohort", i)
        person = _person(prng, _mrn(prng, taken), start)
        life = live(prng, person, start, stream_start + 365 * DAY, aki_from=stream_start)
        if life.aki_time is not None:
            positives.append((person, [r for r in life.results if r[0] <= life.aki_time]))
        else:
            lives.append(life)
        i += 1
    pool = [(n, k) for n, life in enumerate(lives)
            for k, (t, _) in enumerate(life.results) if t >= stream_start]
    picks = rng.sample(pool, min(len(pool), size - len(positives)))
    negatives = [(lives[n].person, lives[n].results[: k + 1]) for n, k in picks]
    rows = []
    for (person, results), aki in [(p, True) for p in positives] + [(p, False) for p in negatives]:
        age = int((results[-1][0] - person.birth) / (365.25 * DAY))
        rows.append((results[-1][0], age, person.sex.lower(), aki, results))
    rows.sort(key=lambda r: r[0])
    return [r[1:] for r in rows]
