"""The AWS adapter: EC2 gangs (:mod:`providers.aws.adapter`), error classification
(:mod:`providers.aws.errors`) and the live catalog (:mod:`providers.aws.catalog`).

Nothing is imported here: boto3 costs ~130 ms, and ``broker quote`` must never pay for it.
The registry imports :mod:`providers.aws.adapter` only when AWS is actually used.
"""
