"""pgolf: a research core for OpenAI's Parameter Golf challenge.

Rooms (see shared DESIGN.md): config, data/, model/, optim/, train, quant/, evaluate, ttt, ngram,
compliance, report/, suite, submission, cli. Dependencies point one way: notebooks and the CLI
import the core; nothing in the core imports a notebook.
"""

__version__ = "0.1.0"
