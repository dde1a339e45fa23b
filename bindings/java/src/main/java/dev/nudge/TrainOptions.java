package dev.nudge;

/**
 * How to train; the defaults are the library's. NaN for a loss parameter means the loss's
 * default. The LoRA shape belongs to the adapter ({@link Adapter.Options}).
 */
public final class TrainOptions {
    /** How the learning rate moves after the warmup (NUDGE_SCHEDULE_* 0..2). */
    public enum Schedule {
        CONSTANT, LINEAR, COSINE
    }

    private String loss;
    private int epochs, maxSteps, batchSize, microBatch, maxLength, schedule, warmupSteps, threads;
    private double beta, labelSmoothing, simpoGamma, discopopTau, ktoDesirableWeight, ktoUndesirableWeight,
            learningRate, weightDecay, maxGradNorm;
    private float loraDropout, evalFraction;
    private boolean shuffle;
    private long memoryBudgetBytes, seed;

    public TrainOptions() {
        Native.trainDefaults(this);
    }

    String loss() {
        return loss;
    }

    /** "sigmoid" (DPO, the default), "ipo", "cdpo", ..., "simpo", "orpo" on pairs; "kto" on thumbs. */
    public TrainOptions loss(String name) { loss = name; return this; }
    public TrainOptions epochs(int n) { epochs = n; return this; }
    /** Stop after this many optimizer steps (0: run the epochs). */
    public TrainOptions maxSteps(int n) { maxSteps = n; return this; }
    /** Examples per optimizer step. */
    public TrainOptions batchSize(int n) { batchSize = n; return this; }
    /** Examples per forward/backward pass (0: the batch size). */
    public TrainOptions microBatch(int n) { microBatch = n; return this; }
    public TrainOptions maxLength(int tokens) { maxLength = tokens; return this; }
    public TrainOptions schedule(Schedule s) { schedule = s.ordinal(); return this; }
    public TrainOptions warmupSteps(int n) { warmupSteps = n; return this; }
    /** Worker threads of this run (0: the model's). */
    public TrainOptions threads(int n) { threads = n; return this; }
    /** The temperature of the implicit reward. */
    public TrainOptions beta(double b) { beta = b; return this; }
    public TrainOptions labelSmoothing(double e) { labelSmoothing = e; return this; }
    public TrainOptions simpoGamma(double g) { simpoGamma = g; return this; }
    public TrainOptions discopopTau(double t) { discopopTau = t; return this; }
    public TrainOptions ktoDesirableWeight(double w) { ktoDesirableWeight = w; return this; }
    public TrainOptions ktoUndesirableWeight(double w) { ktoUndesirableWeight = w; return this; }
    public TrainOptions learningRate(double lr) { learningRate = lr; return this; }
    public TrainOptions weightDecay(double wd) { weightDecay = wd; return this; }
    /** Clip the global gradient norm to this (0: no clipping). */
    public TrainOptions maxGradNorm(double n) { maxGradNorm = n; return this; }
    public TrainOptions loraDropout(float p) { loraDropout = p; return this; }
    /** Fraction of the pairs held out and evaluated after the run. */
    public TrainOptions evalFraction(float f) { evalFraction = f; return this; }
    public TrainOptions shuffle(boolean on) { shuffle = on; return this; }
    /** Bytes of activations kept for the backward pass; layers beyond are recomputed. */
    public TrainOptions memoryBudgetBytes(long bytes) { memoryBudgetBytes = bytes; return this; }
    /** Seed of the shuffling and dropout. */
    public TrainOptions seed(long s) { seed = s; return this; }
}
