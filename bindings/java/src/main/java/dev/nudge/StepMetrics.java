package dev.nudge;

/** What one optimizer step did (TRL's metric names); filled by the library. */
public final class StepMetrics {
    private int step, totalSteps;
    private boolean skipped, hasKl;
    private double epoch, loss, gradNorm, learningRate, rewardsChosen, rewardsRejected, rewardsAccuracies,
            rewardsMargins, logpsChosen, logpsRejected, kl, tokensPerSecond;
    private long pairTokens;

    StepMetrics() {}

    /** 1-based. */
    public int step() { return step; }
    public int totalSteps() { return totalSteps; }
    /** The loss or gradient was not finite and the update was not applied. */
    public boolean skipped() { return skipped; }
    /** Whether {@link #kl()} holds KTO's KL estimate. */
    public boolean hasKl() { return hasKl; }
    public double epoch() { return epoch; }
    public double loss() { return loss; }
    /** The global gradient norm before clipping. */
    public double gradNorm() { return gradNorm; }
    public double learningRate() { return learningRate; }
    public double rewardsChosen() { return rewardsChosen; }
    public double rewardsRejected() { return rewardsRejected; }
    public double rewardsAccuracies() { return rewardsAccuracies; }
    public double rewardsMargins() { return rewardsMargins; }
    public double logpsChosen() { return logpsChosen; }
    public double logpsRejected() { return logpsRejected; }
    public double kl() { return kl; }
    public double tokensPerSecond() { return tokensPerSecond; }
    public long pairTokens() { return pairTokens; }

    @Override
    public String toString() {
        return "step " + step + "/" + totalSteps + " loss " + loss;
    }
}
