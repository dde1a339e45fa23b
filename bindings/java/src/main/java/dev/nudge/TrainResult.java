package dev.nudge;

/** What a training run did; filled by the library. */
public final class TrainResult {
    private int steps, skippedSteps, droppedExamples;
    private boolean cancelled, hasEval;
    private double seconds;
    private final StepMetrics last = new StepMetrics(), eval = new StepMetrics();

    TrainResult() {}

    public int steps() { return steps; }
    public int skippedSteps() { return skippedSteps; }
    /** The progress listener stopped the run. */
    public boolean cancelled() { return cancelled; }
    /** Examples left out (empty text, an unpaired thumb under a pair loss). */
    public int droppedExamples() { return droppedExamples; }
    public boolean hasEval() { return hasEval; }
    public double seconds() { return seconds; }
    /** The last step's metrics (zeros if no step was taken). */
    public StepMetrics last() { return last; }
    /** The held-out metrics when {@link #hasEval()}. */
    public StepMetrics eval() { return eval; }
}
