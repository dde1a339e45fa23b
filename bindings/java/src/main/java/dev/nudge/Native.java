package dev.nudge;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The native methods (bindings/java/jni/nudge_jni.c) and the conversions around them. Text
 * crosses as byte[] of strict UTF-8 both ways: JNI's own string functions use modified UTF-8,
 * which differs for U+0000 and for characters outside the BMP (emoji).
 */
final class Native {
    private Native() {}

    static {
        String path = System.getProperty("nudge.jni.path");
        if (path != null && !path.isEmpty()) {
            System.load(path); // finds libnudge.so through its rpath or LD_LIBRARY_PATH
        } else {
            // libnudge first: Android before 6.0 does not resolve one app library's
            // dependency on another by itself. Elsewhere libnudge_jni's rpath may find it.
            try {
                System.loadLibrary("nudge");
            } catch (UnsatisfiedLinkError e) {
                // nudge_jni's own load below fails with the name of what is missing
            }
            System.loadLibrary("nudge_jni");
        }
    }

    /** UTF-8 of a required string argument; {@code what} names it in the exception. */
    static byte[] utf8(String s, String what) {
        if (s == null) {
            throw new NullPointerException(what + " is null");
        }
        ByteBuffer b;
        try {
            // Unpaired surrogates would otherwise become '?' without a word.
            b = StandardCharsets.UTF_8.newEncoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .encode(CharBuffer.wrap(s));
        } catch (CharacterCodingException e) {
            throw new IllegalArgumentException(what + " is not valid Unicode (an unpaired surrogate)", e);
        }
        byte[] out = new byte[b.remaining()];
        b.get(out);
        for (byte x : out) {
            if (x == 0) {
                throw new IllegalArgumentException(what + " contains U+0000, which a C string cannot hold");
            }
        }
        return out;
    }

    static byte[] utf8OrNull(String s, String what) {
        return s == null ? null : utf8(s, what);
    }

    static String string(byte[] utf8) {
        return utf8 == null ? null : new String(utf8, StandardCharsets.UTF_8);
    }

    /** The TokenSink of an optional listener. */
    static TokenSink sink(TokenListener listener) {
        return listener == null ? null : new TokenSink(listener);
    }

    static <T> T required(T value, String what) {
        if (value == null) {
            throw new NullPointerException(what + " is null");
        }
        return value;
    }

    /** Calls from C, for each token of a reply. */
    static final class TokenSink {
        private final TokenListener listener;

        TokenSink(TokenListener listener) {
            this.listener = listener;
        }

        boolean token(int tokenId, byte[] piece) {
            return listener.onToken(string(piece), tokenId);
        }
    }

    /** Calls from C, for each token of a batch. */
    static final class BatchSink {
        private final BatchTokenListener listener;

        BatchSink(BatchTokenListener listener) {
            this.listener = listener;
        }

        int token(int prompt, int sample, int tokenId, byte[] piece) {
            BatchTokenListener.Action a = listener.onToken(prompt, sample, string(piece), tokenId);
            return required(a, "the BatchTokenListener's action").ordinal();
        }
    }

    /** Calls from C, after each optimizer step. */
    static final class ProgressSink {
        private final ProgressListener listener;

        ProgressSink(ProgressListener listener) {
            this.listener = listener;
        }

        boolean step(StepMetrics metrics) {
            return listener.onStep(metrics);
        }
    }

    /** Calls from C, for each event of a journal listing (collected, since the journal is
     * locked during the listing and the listener must not write to it). */
    static final class EventSink {
        final List<Journal.Event> events = new ArrayList<>();

        void event(long seq, long timestampMs, int kind, int format, boolean thumbsUp, boolean isNew, float strength,
                byte[] id, byte[] prompt, byte[] completion, byte[] rejected) {
            events.add(new Journal.Event(seq, timestampMs, kind, Format.of(format), thumbsUp, isNew, strength,
                    string(id), string(prompt), string(completion), string(rejected)));
        }
    }

    static native int headerVersion();
    static native int versionNumber();
    static native byte[] versionString();
    static native byte[] statusName(int status);
    static native long liveHandles();

    static native void modelDefaults(Model.Options o);
    static native void adapterDefaults(Adapter.Options o);
    static native void journalDataDefaults(Journal.DataOptions o);
    static native void trainDefaults(TrainOptions o);
    static native void generateDefaults(GenerateOptions o);

    static native long modelOpen(byte[] path, Model.Options options);
    static native void modelFree(long model);
    static native void modelInterrupt(long model);
    static native byte[] modelInfo(long model, Model.Info out);
    static native int[] tokenize(long model, byte[] prompt, int format, boolean countOnly, long[] count);
    static native byte[] detokenize(long model, int[] ids, boolean skipSpecial);
    static native double score(long model, long adapter, byte[] prompt, byte[] completion, int format, long[] tokens);

    static native long adapterNew(long model, Adapter.Options options);
    static native long adapterLoad(long model, byte[] dir);
    static native void adapterSave(long adapter, int kind, byte[] path, int dtype);
    static native void adapterInfo(long adapter, Adapter.Info out);
    static native long adapterClone(long adapter);
    static native void adapterSwap(long a, long b);
    static native long adapterStack(long[] adapters, float[] weights);
    static native void adapterFree(long adapter);

    static native long datasetNew();
    static native void datasetFree(long dataset);
    static native void datasetAdd(long dataset, byte[] prompt, byte[] completion, byte[] rejected, boolean up,
            int format);
    static native void datasetCount(long dataset, long[] out);
    static native void datasetAddJournal(long dataset, long journal, Journal.DataOptions options, long[] out);

    static native long journalOpen(byte[] path, int durability);
    static native void journalFree(long journal);
    static native long journalAdd(long journal, byte[] id, byte[] prompt, byte[] completion, byte[] rejected,
            boolean up, int format, float strength);
    static native void journalSync(long journal);
    static native void journalStats(long journal, Journal.Stats out);
    static native void journalList(long journal, EventSink sink);
    static native void journalMarkTrained(long journal, long dataset);
    static native long journalForget(long journal, long[] seqs);
    static native long journalForgetPrompt(long journal, byte[] prompt, int format);
    static native long journalForgetBetween(long journal, long fromMs, long toMs);
    static native void journalCompact(long journal, boolean dropTrained);
    static native void journalRecovered(long journal, long[] out);
    static native long journalRepair(byte[] path);

    static native void train(long adapter, long dataset, TrainOptions options, byte[] loss, ProgressSink sink,
            TrainResult result, StepMetrics last, StepMetrics eval);

    static native byte[] generate(long model, long adapter, byte[] prompt, int format, GenerateOptions options,
            byte[][] stopStrings, TokenSink sink, int[] stopReason);

    static native byte[][] generateBatch(long model, long adapter, byte[][] prompts, int format, int samples,
            GenerateOptions options, byte[][] stopStrings, int maxRows, BatchSink sink, int[] stopReasons);

    static native long sessionNew(long model, long adapter, byte[] systemPrompt);
    static native void sessionFree(long session);
    static native void sessionAdd(long session, byte[] role, byte[] content);
    static native byte[] sessionSend(long session, byte[] userText, GenerateOptions options, byte[][] stopStrings,
            TokenSink sink, int[] stopReason);
    static native float[] sessionLogits(long session);
    static native void sessionRollback(long session, int turns);
    static native void sessionTruncate(long session, int messages);
    static native byte[] sessionMessages(long session);
    static native void sessionInfo(long session, Session.Info out);
}
