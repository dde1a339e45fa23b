package dev.nudge;

/** Sees a training run step by step, on the thread that called train. */
@FunctionalInterface
public interface ProgressListener {
    /**
     * @param metrics what the step did (a new object each step; it may be kept)
     * @return true to go on, false to stop the run after this step
     */
    boolean onStep(StepMetrics metrics);
}
