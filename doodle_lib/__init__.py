"""The doodle platform's shared package: drawings, data, the CNN, training and the MLflow registry."""
