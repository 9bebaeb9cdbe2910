"""vllm.platforms.cpu."""


class CpuPlatform:
    def is_unspecified(self) -> bool:
        return False
