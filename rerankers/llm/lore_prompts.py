"""LORE's prompt: the label scale, rule presets per domain, few-shot examples, and the rendered text.

The instructions carry LORE's two reasoning steps (path construction, path following), a rule list and
the L1–L4 scale; :func:`system_prompt` and :func:`item_text` render them. Nothing here needs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROMPT_VERSION = "lore-v1"

LABELS: dict[int, str] = {
    1: "L1 irrelevant: the item does not serve the query's core need (a different kind of item or topic).",
    2: "L2 weakly relevant: same category or topic, but a key requirement of the query is contradicted, "
    "or the item is only related (an accessory, a neighbouring topic).",
    3: "L3 mostly relevant: the core need is met and nothing important is contradicted, but some requested "
    "attributes are not stated or only partly met.",
    4: "L4 fully relevant: the item satisfies every need of the query, each confirmed by its text.",
}

RULESETS: dict[str, tuple[str, ...]] = {
    "e-commerce": (
        "If the item's product type or category differs from what the query asks for, the label is L1.",
        "An accessory, part or companion product of the requested item is at most L2.",
        "If the type matches but an explicit attribute (brand, model, size, colour, material, gender or age "
        "group, quantity, specification) is contradicted by the item, the label is at most L2.",
        "If the type matches and nothing is contradicted but an explicit attribute is not stated, the label is L3.",
        "L4 requires the type and every explicit attribute to be confirmed by the title, attributes or description.",
        "Judge only from the item's text; do not assume attributes it does not state.",
    ),
    "science": (
        "The query is a scientific claim and the item is a paper's title and abstract.",
        "If the abstract is about a different subject (population, intervention, exposure, outcome or "
        "entity) than the claim, the label is L1.",
        "If it is about the same subject but does not study the relation the claim states, the label is L2.",
        "If it studies the claim's relation but only indirectly or in part, the label is L3.",
        "L4 requires the abstract to report evidence that directly supports or refutes the claim.",
        "Judge only from the abstract; do not use outside knowledge about whether the claim is true.",
    ),
    "web": (
        "The query is a question or topic and the item is a web passage (TREC's four-point scale).",
        "If the passage is about a different topic than the query, the label is L1.",
        "If it is on the query's topic but does not answer it, the label is L2.",
        "If it answers the query only in part, or the answer is unclear or buried in unrelated text, the label is L3.",
        "L4 requires the passage to be dedicated to the query and to contain the exact answer.",
        "Judge only from the passage's text.",
    ),
}

DOMAINS: dict[str, str] = {
    "e-commerce": "e-commerce product search",
    "science": "scientific literature search (queries are claims, items are paper abstracts)",
    "web": "web search (queries are questions or topics, items are passages)",
}


@dataclass(frozen=True, slots=True)
class Example:
    """A worked example shown to the model before the real item (few-shot)."""

    query: str
    title: str
    description: str
    answer: str  # in the output format, ending with "Label: Lx"


EXAMPLES: dict[str, tuple[Example, ...]] = {
    "e-commerce": (
        Example(
            "sony wireless noise cancelling headphones",
            "Sony WH-1000XM4 Wireless Noise Canceling Over-Ear Headphones, Black",
            "Industry-leading noise cancellation, Bluetooth 5.0, 30-hour battery life.",
            "Needs: type headphones; brand Sony; wireless; noise cancelling.\n"
            "Checks: headphones matched; Sony matched; wireless matched; noise cancelling matched.\n"
            "Label: L4",
        ),
        Example(
            "men's running shoes size 10",
            "Women's Trail Running Shoe, Size 8",
            "Lightweight trail runner with a grippy rubber outsole.",
            "Needs: type running shoes; for men; size 10.\n"
            "Checks: running shoes matched; men contradicted (women's); size 10 contradicted (size 8).\n"
            "Label: L2",
        ),
        Example(
            "electric coffee grinder",
            "Ceramic Coffee Mug, 12 oz",
            "Dishwasher-safe stoneware mug for coffee and tea.",
            "Needs: type coffee grinder; electric.\nChecks: coffee grinder contradicted (a mug).\nLabel: L1",
        ),
    ),
    "science": (
        Example(
            "Vitamin C supplementation shortens the duration of the common cold.",
            "Vitamin C for preventing and treating the common cold",
            "A meta-analysis of 31 placebo-controlled trials found that regular vitamin C supplementation "
            "reduced the duration of colds by 8% in adults and 14% in children.",
            "Needs: subject vitamin C supplementation; outcome duration of the common cold; relation shortens.\n"
            "Checks: vitamin C supplementation matched; cold duration matched; direct evidence of shorter colds "
            "matched.\nLabel: L4",
        ),
        Example(
            "Aspirin use lowers the risk of colorectal cancer.",
            "Effects of low-dose aspirin on platelet aggregation in healthy volunteers",
            "We measured platelet aggregation in 40 healthy adults after two weeks of 81 mg aspirin daily.",
            "Needs: subject aspirin use; outcome colorectal cancer risk; relation lowers.\n"
            "Checks: aspirin matched; colorectal cancer not stated (platelet aggregation); relation not studied.\n"
            "Label: L2",
        ),
    ),
}


def system_prompt(domain: str, rules: Sequence[str], reasoning: bool) -> str:
    """The instructions: the two reasoning steps (``reasoning=True``), the rules, the label scale, the format."""
    numbered = "\n".join(f"{i}. {r}" for i, r in enumerate(rules, start=1))
    labels = "\n".join(LABELS[i] for i in (1, 2, 3, 4))
    if reasoning:
        steps = (
            "Work in two steps.\n"
            "Step 1, path construction: list what the query needs as concrete attributes of an item "
            "(its type or subject first, then each explicit or implied requirement), using domain "
            "knowledge to turn vague words into checkable attributes.\n"
            "Step 2, path following: check each needed attribute against the item's title, attributes "
            "and description, and say whether it is matched, contradicted or not stated. Then apply the "
            "rules to choose the label.\n\n"
        )
        answer = (
            "Answer in exactly this format, with no other text:\n"
            "Needs: <the attributes, separated by semicolons>\n"
            "Checks: <each attribute: matched, contradicted or not stated>\n"
            "Label: <L1, L2, L3 or L4>"
        )
    else:
        steps = ""
        answer = "Answer with the label only, in exactly this format: Label: <L1, L2, L3 or L4>"
    return (
        f"You are a relevance judge for {domain}. Given a query and an item, decide how well the "
        f"item satisfies the query.\n\n{steps}Rules:\n{numbered}\n\nLabels:\n{labels}\n\n{answer}"
    )


def item_text(query: str, title: str, description: str) -> str:
    """The user turn for one pair (the description already cut to the token budget)."""
    lines = [f"Query: {query}"]
    if title:
        lines.append(f"Item title: {title}")
    lines.append(f"Item description: {description}")
    return "\n".join(lines)


def example_answer(example: Example, reasoning: bool) -> str:
    """What the assistant says in a few-shot example: the whole answer, or its label line only."""
    return example.answer if reasoning else example.answer.splitlines()[-1]
