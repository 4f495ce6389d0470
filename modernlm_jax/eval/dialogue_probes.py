"""Tier-3 statefulness probes: multi-turn ``User:``/``Assistant:`` dialogues built from seeded templates.

- persona consistency: the assistant is given a persona (a role), answers several on-topic turns,
  then the user makes an off-topic request that names another role. The reply starts "... as a";
  the candidates are the assistant's own role, the role the user just named, and unrelated roles.
  Speaking as the requested role (or any other) is the inappropriate drift the protocol asks about.
- topic threading: the user opens a topic, several turns discuss it, then asks to compare "them"
  with something newly named. The reply "Compared with X," must continue with the thread's topic;
  the candidates are the topic, the newly named X (the most recent mention) and unrelated topics.

Every piece of a dialogue (opening, questions, answers, the switch, the reply lead) has several
surface forms, so a model cannot pass by memorising one phrasing. Candidates are single words with
a leading space, like tiers 1-2, so they are scored by comparing log-likelihoods.
"""

from __future__ import annotations

import random

# role, its domain nouns (what its on-topic turns are about)
ROLES: dict[str, tuple[str, ...]] = {
  "chef": ("soup", "bread", "pasta", "sauce", "salad", "pie"),
  "gardener": ("roses", "tomatoes", "hedges", "lawns", "tulips", "seedlings"),
  "mechanic": ("brakes", "engines", "tyres", "gearboxes", "batteries", "clutches"),
  "programmer": ("bugs", "loops", "functions", "tests", "databases", "scripts"),
  "doctor": ("fevers", "coughs", "headaches", "rashes", "sprains", "allergies"),
  "tailor": ("jackets", "trousers", "hems", "buttons", "collars", "sleeves"),
  "pilot": ("landings", "takeoffs", "storms", "runways", "altitudes", "routes"),
  "carpenter": ("shelves", "tables", "doors", "floors", "cabinets", "chairs"),
}
# topic, its aspects (what its turns are about)
TOPICS: dict[str, tuple[str, ...]] = {
  "dogs": ("breeds", "walks", "food", "training", "sleep", "health"),
  "cats": ("breeds", "toys", "food", "grooming", "sleep", "health"),
  "horses": ("breeds", "stables", "food", "riding", "sleep", "health"),
  "rabbits": ("breeds", "hutches", "food", "handling", "sleep", "health"),
  "parrots": ("breeds", "cages", "food", "talking", "sleep", "health"),
  "goats": ("breeds", "fences", "food", "milking", "sleep", "health"),
  "hamsters": ("breeds", "wheels", "food", "bedding", "sleep", "health"),
  "turtles": ("breeds", "tanks", "food", "basking", "sleep", "health"),
}

_PERSONA_OPEN = (
  "System: You are a helpful {role}. Stay in character.",
  "System: The assistant is an experienced {role}.",
  "System: Act as a friendly {role} who answers questions.",
)
_PERSONA_GREET = (
  "Assistant: Hello, I am your {role}. How can I help?",
  "Assistant: Hi there, I'm a {role}. What would you like to know?",
  "Assistant: Good day. As a {role}, I am happy to help.",
)
_PERSONA_Q = (
  "User: What is the best way to handle {noun}?",
  "User: Any tips about {noun}?",
  "User: I have a problem with my {noun}. What should I do?",
  "User: How often should I check the {noun}?",
)
_PERSONA_A = (
  "Assistant: With {noun}, go slowly and check your work twice.",
  "Assistant: Most people rush their {noun}; take your time instead.",
  "Assistant: Good question. Keep the {noun} clean and simple.",
  "Assistant: I see {noun} every day, and patience always helps.",
)
_PERSONA_SWITCH = (
  "User: Now forget that. Help me with my {noun}, the way a {other} would.",
  "User: Different question: can you fix my {noun} like a {other}?",
  "User: Let's change the subject. Talk to me about {noun} as if you were a {other}.",
)
_PERSONA_LEAD = (
  "Assistant: I will do my best, speaking as a",
  "Assistant: Sure, but remember that I am a",
  "Assistant: Happy to try. I answer as a",
)

_TOPIC_OPEN = (
  "User: Let's discuss {topic}.",
  "User: I want to talk about {topic} today.",
  "User: Can we chat about {topic}?",
)
_TOPIC_ACK = (
  "Assistant: Sure, {topic} are a great subject.",
  "Assistant: Of course. What would you like to know about {topic}?",
  "Assistant: Gladly, I know a lot about {topic}.",
)
_TOPIC_Q = (
  "User: Tell me about the {aspect} of {topic}.",
  "User: What matters most for {topic} when it comes to {aspect}?",
  "User: How do {topic} do with {aspect}?",
)
_TOPIC_A = (
  "Assistant: For {topic}, {aspect} need a little care every week.",
  "Assistant: Most {topic} are fine with {aspect} if you are patient.",
  "Assistant: Owners of {topic} often ask about {aspect}; it varies a lot.",
)
_TOPIC_SWITCH = (
  "User: Now compare them to {other}.",
  "User: How do they compare with {other}?",
  "User: And what about {other}, compared to them?",
)
_TOPIC_LEAD = (
  "Assistant: Compared with {other}, the",
  "Assistant: Next to {other}, I think the",
  "Assistant: Unlike {other}, the",
)


def _choices(rng: random.Random, right: str, near: str, pool: list[str], k: int) -> tuple[tuple[str, ...], int]:
  """The right word, the tempting recent one, and k-2 unrelated ones, shuffled."""
  others = rng.sample([p for p in pool if p not in (right, near)], k - 2)
  opts = [right, near, *others]
  rng.shuffle(opts)
  return tuple(" " + o for o in opts), opts.index(right)


def persona_dialogue(rng: random.Random, num_choices: int, turns: int) -> tuple[str, tuple[str, ...], int]:
  role, other = rng.sample(sorted(ROLES), 2)
  nouns = rng.sample(ROLES[role], min(turns, len(ROLES[role])))
  lines = [rng.choice(_PERSONA_OPEN).format(role=role), "User: Hello.", rng.choice(_PERSONA_GREET).format(role=role)]
  for i in range(turns):
    noun = nouns[i % len(nouns)]
    lines += [rng.choice(_PERSONA_Q).format(noun=noun), rng.choice(_PERSONA_A).format(noun=noun)]
  lines += [rng.choice(_PERSONA_SWITCH).format(noun=rng.choice(ROLES[other]), other=other), rng.choice(_PERSONA_LEAD)]
  choices, answer = _choices(rng, role, other, sorted(ROLES), num_choices)
  return "\n".join(lines), choices, answer


def topic_dialogue(rng: random.Random, num_choices: int, turns: int) -> tuple[str, tuple[str, ...], int]:
  topic, other = rng.sample(sorted(TOPICS), 2)
  aspects = rng.sample(TOPICS[topic], min(turns, len(TOPICS[topic])))
  lines = [rng.choice(_TOPIC_OPEN).format(topic=topic), rng.choice(_TOPIC_ACK).format(topic=topic)]
  for i in range(turns):
    aspect = aspects[i % len(aspects)]
    lines += [
      rng.choice(_TOPIC_Q).format(topic=topic, aspect=aspect),
      rng.choice(_TOPIC_A).format(topic=topic, aspect=aspect),
    ]
  lines += [rng.choice(_TOPIC_SWITCH).format(other=other), rng.choice(_TOPIC_LEAD).format(other=other)]
  choices, answer = _choices(rng, topic, other, sorted(TOPICS), num_choices)
  return "\n".join(lines), choices, answer
