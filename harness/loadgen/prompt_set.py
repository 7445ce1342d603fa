"""A small set of real prompts, bundled with the harness.

Written for this project by its authors and dedicated to the public domain (CC0 1.0): copy,
modify and redistribute them freely. They are short everyday questions and tasks of the kinds
chat services receive, in English, with no personal data.
"""

from __future__ import annotations

__all__ = ["LICENSE", "PROMPTS"]

LICENSE = "CC0-1.0 (written for llm-chaos-harness)"

PROMPTS: tuple[str, ...] = (
    "What is the capital of Australia, and why is it not Sydney?",
    "Explain in two sentences what a load balancer does.",
    "Write a haiku about a server room at night.",
    "Give me three ideas for a vegetarian dinner that takes under 30 minutes.",
    "What is the difference between a process and a thread?",
    "Summarize the plot of a detective story in which the butler is innocent.",
    "How do I reverse a list in Python without modifying the original?",
    "Why is the sky blue? Answer for a ten-year-old.",
    "List five things to check before deploying a web service to production.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "What does HTTP status code 429 mean and how should a client react to it?",
    "Write a short, polite email asking a colleague to review a pull request.",
    "Explain what 'p99 latency' means to someone who is not an engineer.",
    "Suggest a name for a cat that likes to sit on keyboards.",
    "What are the main causes of inflation? Keep it under 100 words.",
    "Describe how a bicycle gear system works.",
    "Give a one-paragraph history of the printing press.",
    "What is a good way to learn a new programming language quickly?",
    "Write a limerick about a retry loop that never ends.",
    "Compare trains and planes for a 500 km trip: time, cost and emissions.",
    "How does a refrigerator keep food cold?",
    "Explain the idea of a hash function with an everyday analogy.",
    "What should I pack for a three-day hiking trip in autumn?",
    "Write a SQL query that counts orders per customer in a table named orders.",
    "What is the Pythagorean theorem, and where is it used in practice?",
    "Give me a two-sentence pep talk before a job interview.",
    "Why do leaves change color in the fall?",
    "Explain the difference between latency and throughput with an example.",
    "Draft three bullet points for a status update on a delayed project.",
    "What is a token in the context of large language models?",
    "Tell a very short story about a robot learning to paint.",
    "How can I make my morning routine more productive?",
)
