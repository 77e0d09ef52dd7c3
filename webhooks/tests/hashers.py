"""Password hashing for the tests (conftest.py): Django's own PBKDF2, with few iterations."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FewIterationsPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    # Same algorithm, salt and stored format as production's hasher; only the work factor is
    # lower, which no test is about (each guess is still a real hash and a real comparison).
    iterations = 1_000
