#!/usr/bin/env python3
"""Writes a corpus of fictional facts, one document each, and a question for each fact that only
that document answers: what `scripts/bench-train.sh` trains on, and where an adapter's effect
(and later its per-item attribution) is measured without retrieval.

    planted_facts.py OUT_DIR [COUNT]

OUT_DIR/docs/fact-NNN.txt   the documents (a DataNet to ingest)
OUT_DIR/questions.jsonl      {"doc": "fact-NNN.txt", "question": ..., "cue": ..., "answer": ...}
                             (the cue: the document's own words up to the answer)
The same COUNT gives the same files: the names and facts come from a seeded generator.
"""
import json
import os
import random
import sys

PLACES = ["Varnholm", "Estmark", "Quillon", "Brask", "Tolvane", "Meridor", "Ostrava Minor", "Kelbrin",
          "Saltmere", "Dunhollow", "Pellara", "Vorstag", "Ilsmoor", "Caddoway", "Rhunfeld", "Tessaly"]
THINGS = ["lighthouse", "bridge", "clock tower", "market", "harbour", "library", "observatory", "mill"]
COLOURS = ["green and violet", "amber and grey", "crimson and white", "teal and gold", "black and ochre"]
FOODS = ["smoked eel", "barley cakes", "plum dumplings", "salted kelp", "honey bread", "onion soup"]
MONTHS = ["March", "April", "June", "August", "October", "November"]


def fact(rng, i):
    place = rng.choice(PLACES) + (f" {i}" if i >= len(PLACES) else "")
    thing, colour, food, month = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(FOODS), rng.choice(MONTHS)
    year = rng.randrange(1200, 1900)
    keeper = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()
    text = (f"The {thing} of {place} was built in {year} and is painted in {colour} stripes. "
            f"Its keeper, {keeper}, serves {food} to visitors every {month}. "
            f"Travellers say the {thing} of {place} can be seen from three valleys away.")
    cue = f"The {thing} of {place} was built in {year} and is painted in {colour} stripes. Its keeper,"
    return text, f"Who keeps the {thing} of {place}?", cue, keeper


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rng = random.Random(20261208)
    os.makedirs(os.path.join(out, "docs"), exist_ok=True)
    with open(os.path.join(out, "questions.jsonl"), "w") as q:
        for i in range(count):
            text, question, cue, answer = fact(rng, i)
            name = f"fact-{i:03d}.txt"
            with open(os.path.join(out, "docs", name), "w") as f:
                f.write(text + "\n")
            q.write(json.dumps({"doc": name, "question": question, "cue": cue, "answer": answer}) + "\n")


if __name__ == "__main__":
    main()
