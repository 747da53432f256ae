"""Trust between organizations: signed statements about keys, and who speaks for whom.

``statements`` turns an org's signed delegation or revocation into the
record that carries it in ``grid.members`` (and back, checking every
signature); ``state`` folds the statements a node holds into answers
("does this key speak for that org at that time, and is this change of
its chain still valid?"); ``access`` applies those answers, the record's
owner and the registry's write policy to one change. All three are
sans-IO: the engine feeds them what it stores, the same way for local and
remote changes.
"""
