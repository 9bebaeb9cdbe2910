"""vllm.platforms: no GPU, so the platform is unspecified until the CLI picks one."""


class UnspecifiedPlatform:
    def is_unspecified(self) -> bool:
        return True


current_platform: UnspecifiedPlatform = UnspecifiedPlatform()
