"""Files the jobs write and the rule that keeps them off what a command reads: shared helpers below every job.

``paths``: the one check of a command's inputs against its outputs; ``outputs``: writable checks and atomic
writes; ``durable``: results written as frames complete; ``video_out``: annotated video encoding.
"""
