"""``python -m tests.training.fit_variant [--float64] [--logical-cpus N] FIT-ARGS``: training.fit set up for a test.

``--float64`` makes Keras build float64 models (see tests/training/test_distribute.py for why);
``--logical-cpus N`` splits the CPU into N logical devices, so that ``--strategy mirrored`` has N
replicas on a machine without GPUs. Both must be set before TensorFlow starts, hence a process of
their own; everything after them goes to ``training.fit`` unchanged.
"""

import sys


def main(argv):
    float64, logical_cpus = False, 1
    while argv and argv[0] in ("--float64", "--logical-cpus"):
        if argv[0] == "--float64":
            float64, argv = True, argv[1:]
        else:
            logical_cpus, argv = int(argv[1]), argv[2:]
    if logical_cpus > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    if float64:
        import keras

        keras.config.set_floatx("float64")
    from training import fit

    return fit.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
