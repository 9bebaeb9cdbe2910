"""vllm.utils.argparse_utils."""

import argparse


class FlexibleArgumentParser(argparse.ArgumentParser):
    """The stand-in takes dashes only."""
