"""The latent-space scorecard: metrics, the judge, and the evaluate job."""
