"""A trained generator, put to use: a diffusers pipeline (:mod:`.diffusers_pipeline`), an
MLflow model in the registry (:mod:`.mlflow_model`), and latent walks and edits rendered to
strips and animations (:mod:`.walks`)."""
