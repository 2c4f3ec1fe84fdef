"""Seeded English prose for the sample pages: titles, paragraphs and the captions that name images.

Why: the pipeline's quality filters and dedup need text that reads like real articles and
varies enough that pages are not near-duplicates; the captions and adjacent sentences
carry an image's description (`ShapeSpec.description`) so the text next to it names it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Topic:
    """One subject's vocabulary: a page draws all its prose from one topic, so it stays on subject."""

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]  # regular verbs: past tense == past participle
    groups: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        ("tomato plant", "raised bed", "compost heap", "greenhouse", "seed tray", "apple tree",
         "herb garden", "allotment", "rose bush", "vegetable patch", "cold frame", "water butt"),
        ("overgrown", "sheltered", "productive", "neglected", "fragrant", "muddy", "tidy", "sunny"),
        ("planted", "pruned", "watered", "harvested", "moved", "repaired", "mulched", "divided"),
        ("gardeners", "volunteers", "allotment holders", "growers"),
    ),
    Topic(
        ("sourdough starter", "tomato sauce", "lemon cake", "vegetable stock", "spice blend",
         "pastry case", "fish stew", "bean salad", "rice dish", "market stall", "bread oven"),
        ("crisp", "rich", "tangy", "fragrant", "light", "hearty", "delicate", "smoky"),
        ("baked", "tasted", "simmered", "seasoned", "roasted", "prepared", "adjusted", "served"),
        ("home cooks", "chefs", "bakers", "food writers"),
    ),
    Topic(
        ("bus route", "library", "bridge", "bike lane", "market square", "housing plan", "park",
         "tram line", "school budget", "town hall", "car park", "swimming pool"),
        ("busy", "crowded", "quiet", "expensive", "popular", "controversial", "historic", "modern"),
        ("approved", "delayed", "opened", "closed", "renovated", "discussed", "funded", "redesigned"),
        ("residents", "council members", "commuters", "shop owners"),
    ),
    Topic(
        ("telescope", "field study", "sample", "experiment", "weather station", "microscope",
         "data set", "research vessel", "glacier", "coral reef", "soil survey", "bird census"),
        ("unexpected", "careful", "remarkable", "detailed", "promising", "unusual", "precise", "fragile"),
        ("measured", "recorded", "observed", "tested", "analysed", "collected", "published", "compared"),
        ("researchers", "students", "scientists", "technicians"),
    ),
    Topic(
        ("coastal path", "night train", "harbour", "mountain hut", "old town", "ferry crossing",
         "guesthouse", "museum", "viewpoint", "street market", "lighthouse", "river walk"),
        ("scenic", "remote", "charming", "windy", "crowded", "peaceful", "colourful", "steep"),
        ("visited", "explored", "photographed", "crossed", "reached", "booked", "mapped", "described"),
        ("travellers", "hikers", "locals", "tour guides"),
    ),
    Topic(
        ("laptop", "software update", "battery", "home router", "phone app", "keyboard",
         "open-source project", "data centre", "printer", "sensor", "smart meter", "hard drive"),
        ("reliable", "slow", "affordable", "clever", "noisy", "efficient", "outdated", "secure"),
        ("installed", "upgraded", "tested", "replaced", "configured", "released", "fixed", "benchmarked"),
        ("engineers", "users", "developers", "reviewers"),
    ),
    Topic(
        ("home match", "training session", "league table", "relay team", "stadium", "cup final",
         "youth squad", "marathon", "cycling race", "rowing club", "tennis court", "climbing wall"),
        ("tense", "dramatic", "disappointing", "thrilling", "wet", "close", "historic", "exhausting"),
        ("played", "won", "postponed", "trained", "celebrated", "cancelled", "finished", "watched"),
        ("supporters", "players", "coaches", "fans"),
    ),
    Topic(
        ("exhibition", "mural", "sculpture", "sketchbook", "gallery", "portrait", "print studio",
         "ceramic bowl", "photograph", "installation", "poster", "tapestry"),
        ("bold", "quiet", "striking", "playful", "abstract", "colourful", "minimal", "intricate"),
        ("painted", "exhibited", "restored", "framed", "designed", "sketched", "curated", "printed"),
        ("artists", "curators", "visitors", "critics"),
    ),
)
PLACES: tuple[str, ...] = (
    "the harbour district", "the old market", "Riverside", "the north valley", "Eastfield",
    "the city centre", "Millbrook", "the coast road", "Westgate", "the university quarter",
    "Hillcrest", "the railway arches", "Oakmoor", "the south bank", "Fernley", "the high street",
)
FIRST_NAMES: tuple[str, ...] = (
    "Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonah", "Keiko",
    "Luis", "Maya", "Nikhil", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tomas", "Uma", "Victor",
)
LAST_NAMES: tuple[str, ...] = (
    "Lopez", "Okafor", "Novak", "Schmidt", "Tanaka", "Brennan", "Costa", "Haddad", "Ivanova",
    "Jensen", "Kowalski", "Mensah", "Nguyen", "Patel", "Rossi", "Silva", "Walsh", "Yilmaz",
)
TIMES: tuple[str, ...] = (
    "On Monday", "Last spring", "Early this morning", "In late October", "Over the weekend",
    "Two years ago", "Last winter", "At the start of the month", "Late on Friday", "This summer",
)
SEASONS: tuple[str, ...] = ("spring", "summer", "autumn", "winter")
PERIODS: tuple[str, ...] = ("week", "month", "season", "year", "summer", "decade")
WEATHER: tuple[str, ...] = ("cold", "wet", "windy", "hot", "grey", "stormy")
ADVERBS: tuple[str, ...] = ("surprisingly", "rather", "quite", "remarkably", "increasingly", "slightly")
ORDINALS: tuple[str, ...] = ("second", "third", "fourth", "fifth", "first")
SMALL_NUMBERS: tuple[str, ...] = ("two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve")

# Placeholders: {noun} {noun2} {nouns} {nouns2} {adj} {adj2} {verb} {place} {person}
# {time} {season} {period} {weather} {adv} {group} {num} {year} {ordinal}
SENTENCE_TEMPLATES: tuple[str, ...] = (
    "{time}, {person} {verb} the {adj} {noun} near {place}.",
    "According to {person}, the {noun} has become {adv} {adj} since {year}.",
    "Most {group} agree that {nouns} are {adj} but rarely {adj2}.",
    "The {noun} in {place} was {adv} {adj}, which surprised almost everyone who saw it.",
    "It took {num} weeks before anyone noticed that the {noun} had been {verb}.",
    "{person} said the {nouns} would be {verb} again next {season}.",
    "There is no simple answer, but the {adj} {noun} offers a useful starting point.",
    "In {year}, the {group} of {place} {verb} {num} {nouns} in a single afternoon.",
    "Nobody expected the {noun} to matter so much, yet it shaped the rest of the {period}.",
    "Visitors to {place} often ask why the {nouns} look so {adj}.",
    "{person} has spent {num} years studying {nouns} and still finds them {adj}.",
    "A {adj} {noun} can make a real difference when the weather turns {weather}.",
    "The committee {verb} the plan after a long debate about {nouns} and {nouns2}.",
    "We {verb} the {noun} twice, and the second attempt was noticeably more {adj}.",
    "If you only have an hour in {place}, start with the {noun} and work outwards.",
    "Interest in {nouns} rose sharply last {season}, according to {person}.",
    "Some readers wrote in to say the {noun} felt {adj}; others found it {adj2}.",
    "By the end of the {period}, the {nouns} had been {verb} and the {noun2} was ready.",
    "This is the {ordinal} time the {group} have {verb} a {noun} of this size.",
    "The {group} who {verb} the {noun2} asked not to be named.",
    "Even on a {weather} day, the {noun} near {place} draws a {adj} crowd.",
    "What makes the {noun} {adj} is not its size but the care that went into it.",
    "{person} pointed out that {nouns} and {nouns2} have more in common than most people think.",
    "For now, the {noun} remains {adv} {adj}, and the {group} seem happy to keep it that way.",
    "Records from {year} show that the {noun} was {verb} at least {num} times.",
    "The {adj} {nouns} of {place} are a reminder of how quickly things can change.",
    "Our advice is simple: look at the {noun} first, then decide whether the {noun2} is worth it.",
    "When the {noun} was finally {verb}, the {group} gathered to watch.",
)
TITLE_TEMPLATES: tuple[str, ...] = (
    "How {nouns} changed {place}",
    "{adj} {nouns}: what {group} learned this {season}",
    "Why the {noun} in {place} matters more than you think",
    "A {adj} {period} for {group} in {place}",
    "{num} lessons from the {noun}",
    "Notes on a {adj} {noun}",
    "The {noun}, the {noun2} and the {group} of {place}",
    "Inside the {adj} world of {nouns}",
)
LISTICLE_TITLE_TEMPLATES: tuple[str, ...] = (
    "{num} {adj} {nouns} worth a closer look",
    "{num} things we learned about {nouns}",
    "Our {num} favourite {nouns} this {season}",
)
SHORT_TITLES: tuple[str, ...] = ("Photo of the day", "Picture of the week", "Image gallery", "Snapshot")
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{D}.",
    "Figure {k}: {d}.",
    "{D}. Photo: {person}",
    "Above: {d}.",
    "{D}, from our archive.",
    "{D}. Illustration by {person}.",
)
ADJACENT_BEFORE_TEMPLATES: tuple[str, ...] = (
    "The image below shows {d}.",
    "Below you can see {d}.",
    "Here is the picture we promised: {d}.",
)
ADJACENT_AFTER_TEMPLATES: tuple[str, ...] = (
    "The picture above shows {d}.",
    "In the image above you can see {d}.",
    "That illustration shows {d}, drawn for this article.",
)
VIDEO_CAPTION_TEMPLATES: tuple[str, ...] = (
    "Video: {d}.",
    "Watch: {d}, filmed for this story.",
    "A short clip of {d}.",
)


def plural(noun: str) -> str:
    """English plural of the nouns used here ("bus route" -> "bus routes", "glass" -> "glasses")."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def capitalise(text: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case the rest)."""
    return text[:1].upper() + text[1:]


def count_words(text: str) -> int:
    """Whitespace-separated words: how the truth counts main-content words."""
    return len(text.split())


class TextMaker:
    """Seeded English prose from templates; varied enough that pages are not near-duplicates."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def _fill(self, templates: tuple[str, ...], slots: _Slots) -> str:
        return capitalise(self.rng.choice(templates).format_map(slots))

    def sentence(self, topic: Topic) -> str:
        return self._fill(SENTENCE_TEMPLATES, _Slots(self, topic))

    def paragraph(self, topic: Topic, sentences: Optional[int] = None) -> str:
        n = sentences if sentences is not None else self.rng.randint(3, 6)
        return " ".join(self.sentence(topic) for _ in range(n))

    def title(self, topic: Topic, listicle_count: Optional[int] = None) -> str:
        slots = _Slots(self, topic)
        if listicle_count is not None:
            slots["num"] = str(listicle_count)  # listicles use digits: "5 things we learned"
            return self._fill(LISTICLE_TITLE_TEMPLATES, slots)
        slots["num"] = capitalise(self.rng.choice(SMALL_NUMBERS))
        return self._fill(TITLE_TEMPLATES, slots)

    def caption(self, description: str, index: int) -> str:
        template = self.rng.choice(CAPTION_TEMPLATES)
        return template.format(D=capitalise(description), d=description, k=index, person=self.person())


class _Slots(dict):
    """Template slot values drawn on first use: only the slots a template names cost RNG calls."""

    def __init__(self, maker: TextMaker, topic: Topic) -> None:
        super().__init__()
        self.maker = maker
        self.topic = topic

    def __missing__(self, key: str) -> str:
        value = self._draw(key)
        self[key] = value
        return value

    def _draw(self, key: str) -> str:
        r, topic = self.maker.rng, self.topic
        if key == "noun":
            return r.choice(topic.nouns)
        if key == "noun2":
            return r.choice([n for n in topic.nouns if n != self["noun"]])
        if key == "nouns":
            return plural(self["noun"])
        if key == "nouns2":
            return plural(self["noun2"])
        if key == "adj":
            return r.choice(topic.adjectives)
        if key == "adj2":
            return r.choice([a for a in topic.adjectives if a != self["adj"]])
        if key == "verb":
            return r.choice(topic.verbs)
        if key == "group":
            return r.choice(topic.groups)
        if key == "person":
            return self.maker.person()
        if key == "year":
            return str(r.randrange(1950, 2024))
        return r.choice(_SLOT_VOCAB[key])


_SLOT_VOCAB: dict[str, tuple[str, ...]] = {
    "place": PLACES, "time": TIMES, "season": SEASONS, "period": PERIODS, "weather": WEATHER,
    "adv": ADVERBS, "num": SMALL_NUMBERS, "ordinal": ORDINALS,
}
