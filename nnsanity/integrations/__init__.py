"""Thin adapters that drive :class:`nnsanity.TrainingMonitor` from a framework's own callbacks.

Each module imports its framework and nothing else imports them: ``pip install
'nnsanity[lightning]'`` or ``'nnsanity[transformers]'``; the core needs neither.
"""
