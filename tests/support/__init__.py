"""What the test modules share: databases, servers, the CLI, the relay, waiting.

Test modules import from here and never from one another.
"""
