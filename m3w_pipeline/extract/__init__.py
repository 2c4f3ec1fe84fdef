"""From a decoded page to ordered nodes: main content with its media references, opt-out signals and language."""
