import numpy as np
from sklearn.metrics import log_loss, mean_squared_error

from prefect_mlops.mlops.families.lightgbm.training import validation_loss


def test_binary_loss_matches_sklearn():
    raw = np.array([-2.0, 0.5, 3.0, -0.1])
    labels = np.array([0, 1, 1, 1])
    expected = log_loss(labels, 1 / (1 + np.exp(-raw)))
    assert np.isclose(validation_loss("binary", raw, labels), expected)


def test_multiclass_loss_matches_sklearn():
    raw = np.array([[2.0, 0.1, -1.0], [0.0, 0.0, 3.0], [1.0, 1.5, 0.2]])
    labels = np.array([0, 2, 1])
    proba = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    assert np.isclose(validation_loss("multiclass", raw, labels), log_loss(labels, proba))


def test_regression_loss_is_rmse():
    pred, truth = np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0])
    assert np.isclose(
        validation_loss("regression", pred, truth), np.sqrt(mean_squared_error(truth, pred))
    )
