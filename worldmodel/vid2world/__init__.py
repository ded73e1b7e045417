"""Vid2World: a video diffusion model made causal and action-conditioned, as a world model."""
from worldmodel.vid2world.causalize import causal_kernel, causalize
from worldmodel.vid2world.configs import BackboneConfig, Vid2WorldConfig
from worldmodel.vid2world.model import Vid2World

__all__ = ["BackboneConfig", "Vid2World", "Vid2WorldConfig", "causal_kernel", "causalize"]
