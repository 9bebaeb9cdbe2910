"""vllm.tool_parsers: the registry knows the parsers the test names in VLLM_STANDIN_REGISTERED."""

import os


class ToolParserManager:
    @classmethod
    def list_registered(cls) -> list[str]:
        return sorted(filter(None, os.environ.get("VLLM_STANDIN_REGISTERED", "").split(",")))

    @classmethod
    def get_tool_parser(cls, name: str) -> type:
        if name not in cls.list_registered():
            raise KeyError(f"Tool parser '{name}' not found.")
        if name == os.environ.get("VLLM_STANDIN_BROKEN_PARSER"):
            raise ModuleNotFoundError("No module named 'ijson'", name="ijson")
        return type(name, (), {})
