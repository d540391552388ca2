"""``vasseg sweep``: configs x seeds x overrides as concurrent trainings (:mod:`.runner`, CLI in :mod:`.cli`)."""
