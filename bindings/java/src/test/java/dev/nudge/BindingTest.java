package dev.nudge;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Stream;

/**
 * Personalizes a model through the Java binding and checks it against the C API: the same
 * sequence as bindings/java/test/reference.c, whose output must equal the lines printed here
 * (losses and scores to the bit, texts to the byte). Then the binding's own promises: typed
 * exceptions, closed handles, exceptions thrown by listeners, interrupts, no handle leaked.
 *
 * usage: BindingTest MODEL REFERENCE_BINARY (exit status 1 on any failure)
 */
public final class BindingTest {
    // The data, the options and the seeds: the same as reference.c's.
    static final int THREADS = 1;
    static final String[] PROMPTS = {
        "What is the capital of France?", "Name a primary color.", "How many legs does a cat have?",
        "Qu'est-ce qu'une crème brûlée ? 🍮", "Say hello.", "What color is the sky?",
    };
    static final String[] GOOD = {
        "The capital of France is Paris.", "Red is a primary color.", "A cat has four legs.",
        "Un dessert à la crème, caramélisé dessus.", "Hello! How can I help?", "The sky is blue.",
    };
    static final String[] BAD = {
        "idk, look it up yourself", "whatever, colors are boring", "Why do you care?",
        "Aucune idée 🤷", "No.", "Go outside and look.",
    };
    static final String UNICODE_TEXT = "Crème brûlée, 日本語 and emoji 🙂!";
    static final String SECRET = "My password is hunter2.";
    static final String GEN_PROMPT = "The capital of France is";
    static final String CHAT_PROMPT = "[{\"role\": \"user\", \"content\": \"Say hello.\"}]";
    static final String CHAT_ANSWER = "[{\"role\": \"assistant\", \"content\": \"Hello! How can I help?\"}]";

    static final List<String> lines = new ArrayList<>();

    static void line(String s) {
        lines.add(s);
        System.out.println(s);
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError("check failed: " + what);
        }
    }

    /** C's printf("%.17g"): 17 significant digits identify a double, so equal text is equal bits. */
    static String g17(double d) {
        if (Double.isNaN(d)) {
            return Double.doubleToRawLongBits(d) < 0 ? "-nan" : "nan";
        }
        if (Double.isInfinite(d)) {
            return d > 0 ? "inf" : "-inf";
        }
        if (d == 0) {
            return 1 / d < 0 ? "-0" : "0";
        }
        // glibc rounds the exact binary value to nearest, ties to even.
        BigDecimal b = new BigDecimal(d).round(new MathContext(17, RoundingMode.HALF_EVEN));
        int exp = b.precision() - b.scale() - 1;
        b = b.stripTrailingZeros();
        if (exp >= -4 && exp < 17) {
            return b.toPlainString();
        }
        String digits = b.unscaledValue().abs().toString();
        String mantissa = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
        return (d < 0 ? "-" : "") + mantissa + String.format("e%c%02d", exp < 0 ? '-' : '+', Math.abs(exp));
    }

    /** key="text" with bytes outside printable ASCII as \xHH, as reference.c's put_text. */
    static String text(String key, String s) {
        StringBuilder b = new StringBuilder(key).append("=\"");
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) {
            int c = x & 0xff;
            if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
                b.append((char) c);
            } else {
                b.append(String.format("\\x%02x", c));
            }
        }
        return b.append('"').toString();
    }

    static int bit(boolean b) {
        return b ? 1 : 0;
    }

    // ---- The sequence of reference.c ----------------------------------------------------

    /** A streamed reply: the pieces the listener saw. */
    static final class Streamed implements TokenListener {
        final StringBuilder text = new StringBuilder();
        final List<String> ids = new ArrayList<>();
        int pieces, stopAfter;
        String third = "";

        @Override
        public boolean onToken(String piece, int tokenId) {
            text.append(piece);
            ids.add(Integer.toString(tokenId));
            if (pieces >= 2 && third.isEmpty() && !piece.isEmpty() && piece.getBytes(StandardCharsets.UTF_8).length < 64) {
                third = piece;
            }
            pieces++;
            return stopAfter == 0 || pieces < stopAfter;
        }
    }

    static void printReply(String what, String name, Streamed s, Generation g) {
        check(g.text().equals(s.text.toString()), what + " " + name + ": the streamed pieces add up to the reply");
        line(what + " " + name + " stop=" + g.stopReason().ordinal() + " pieces=" + s.pieces + " ids="
                + String.join(",", s.ids) + " " + text("text", g.text()));
    }

    static Streamed generate(String name, Model m, Adapter a, GenerateOptions o, int stopAfter) {
        Streamed s = new Streamed();
        s.stopAfter = stopAfter;
        Generation g = m.generate(a, GEN_PROMPT, Format.TEXT, o, s);
        printReply("generate", name, s, g);
        return s;
    }

    /** Replies of a batch: 2 prompts x 2 samples; reply (1, 0) is stopped after two pieces. */
    static void generateBatch(Model m, Adapter a) {
        Streamed[] replies = {new Streamed(), new Streamed(), new Streamed(), new Streamed()};
        GenerateOptions o = new GenerateOptions().maxNewTokens(8).temperature(0.8f).seed(9);
        Generation[][] g = m.generateBatch(a, new String[] {GEN_PROMPT, PROMPTS[4]}, Format.TEXT, 2, o, 3,
                (prompt, sample, piece, id) -> {
                    Streamed s = replies[prompt * 2 + sample];
                    s.onToken(piece, id);
                    return prompt == 1 && sample == 0 && s.pieces >= 2 ? BatchTokenListener.Action.STOP_REPLY
                            : BatchTokenListener.Action.CONTINUE;
                });
        for (int i = 0; i < 4; i++) {
            printReply("batch", i / 2 + "." + i % 2, replies[i], g[i / 2][i % 2]);
        }
    }

    static void send(Session session, String name, String userText, GenerateOptions o) {
        Streamed s = new Streamed();
        printReply("send", name, s, session.send(userText, o, s));
        Session.Info i = session.info();
        line("session messages=" + i.messages() + " cached=" + i.cachedTokens() + " reused=" + i.reusedTokens()
                + " cache_bytes=" + i.cacheBytes());
    }

    static void printStats(String name, Journal j) {
        Journal.Stats s = j.stats();
        line("journal " + name + " records=" + s.records() + " thumbs=" + s.thumbs() + " up=" + s.thumbsUp() + " down="
                + s.thumbsDown() + " pairs=" + s.pairs() + " marks=" + s.trainingMarks() + " new=" + s.newSinceTraining()
                + " next_seq=" + s.nextSequence() + " forgotten=" + s.forgotten() + " trained_before="
                + bit(s.lastTrainingMs() >= 0));
    }

    static void score(String name, Model m, Adapter a) {
        Model.Score chosen = m.score(a, PROMPTS[0], GOOD[0], Format.TEXT);
        Model.Score rejected = m.score(a, PROMPTS[0], BAD[0], Format.TEXT);
        Model.Score chat = m.score(a, CHAT_PROMPT, CHAT_ANSWER, Format.CHAT_JSON);
        line("score " + name + " chosen=" + g17(chosen.logp()) + " rejected=" + g17(rejected.logp()) + " chosen_tokens="
                + chosen.tokens() + " chat=" + g17(chat.logp()) + " chat_tokens=" + chat.tokens());
    }

    static ProgressListener printSteps(int stopAfter) {
        return m -> {
            line("step=" + m.step() + " total=" + m.totalSteps() + " skipped=" + bit(m.skipped()) + " loss="
                    + g17(m.loss()) + " grad_norm=" + g17(m.gradNorm()) + " lr=" + g17(m.learningRate()) + " chosen="
                    + g17(m.rewardsChosen()) + " rejected=" + g17(m.rewardsRejected()) + " margins="
                    + g17(m.rewardsMargins()) + " accuracies=" + g17(m.rewardsAccuracies()) + " has_kl="
                    + bit(m.hasKl()) + " kl=" + g17(m.kl()) + " pair_tokens=" + m.pairTokens());
            return stopAfter == 0 || m.step() < stopAfter;
        };
    }

    static void printResult(TrainResult r) {
        line("train steps=" + r.steps() + " skipped=" + r.skippedSteps() + " cancelled=" + bit(r.cancelled())
                + " dropped=" + r.droppedExamples() + " last_loss=" + g17(r.last().loss()));
    }

    static void sequence(String modelPath, Path dir) {
        long liveStart = Nudge.liveHandles();
        line("version=" + Nudge.version());
        Adapter.Options shape = new Adapter.Options().rank(4).alpha(8f).seed(7);
        try (Model model = Model.open(modelPath, new Model.Options().threads(THREADS));
                Adapter adapter = Adapter.create(model, shape);
                Journal journal = Journal.open(dir.resolve("feedback.journal").toString())) {
            Model.Info info = model.info();
            line("model architecture=" + info.architecture() + " gguf=" + bit(info.isGguf()) + " vocab="
                    + info.vocabSize() + " hidden=" + info.hiddenSize() + " intermediate=" + info.intermediateSize()
                    + " layers=" + info.numLayers() + " heads=" + info.numAttentionHeads() + " kv_heads="
                    + info.numKeyValueHeads() + " head_dim=" + info.headDim() + " context=" + info.contextLength()
                    + " chat_template=" + bit(info.hasChatTemplate()) + " bos=" + info.bosTokenId() + " eos="
                    + info.eosTokenId() + " threads=" + info.threads());

            int[] ids = model.tokenize(UNICODE_TEXT, Format.TEXT);
            check(model.countTokens(UNICODE_TEXT, Format.TEXT) == ids.length, "countTokens agrees with tokenize");
            StringBuilder joined = new StringBuilder();
            for (int id : ids) {
                joined.append(joined.length() > 0 ? "," : "").append(id);
            }
            String back = model.detokenize(ids, true);
            check(back.equals(UNICODE_TEXT), "text beyond the BMP survives tokenize + detokenize: " + back);
            line("tokens n=" + ids.length + " ids=" + joined + " " + text("detokenized", back));

            Adapter.Info ai = adapter.info();
            line("adapter rank=" + ai.rank() + " alpha=" + g17(ai.alpha()) + " targets=" + ai.targets() + " rslora="
                    + bit(ai.rslora()) + " params=" + ai.params());

            for (int i = 0; i < 4; i++) {
                journal.addThumb("t" + i + "-up", PROMPTS[i], GOOD[i], true);
                journal.addThumb("t" + i + "-down", PROMPTS[i], BAD[i], false);
            }
            journal.addPair("p4", PROMPTS[4], GOOD[4], BAD[4], Format.TEXT, 2.0f);
            journal.addThumb("t0-up", PROMPTS[0], GOOD[0], true);
            long lone = journal.addThumb("lone", PROMPTS[5], GOOD[5], true, Format.TEXT, 0.5f);
            journal.addThumb("secret", SECRET, "Noted.", true);
            printStats("recorded", journal);
            long forgotten = journal.forget(lone);
            long byPrompt = journal.forgetPrompt(SECRET, Format.TEXT);
            line("forgot lone=" + lone + " by_number=" + forgotten + " by_prompt=" + byPrompt);
            printStats("forgot", journal);
            journal.compact(false);
            printStats("compacted", journal);
            for (Journal.Event e : journal.events()) {
                line("event seq=" + e.seq() + " kind=" + bit(e.isPair()) + " format=" + e.format().ordinal() + " up="
                        + bit(e.thumbsUp()) + " new=" + bit(e.isNew()) + " strength=" + g17(e.strength()) + " "
                        + text("id", e.id()) + " " + text("prompt", e.prompt()) + " "
                        + text("completion", e.completion()) + " "
                        + text("rejected", e.rejected() != null ? e.rejected() : "(none)"));
            }

            try (Dataset pairs = new Dataset(); Dataset thumbs = new Dataset()) {
                Dataset.Counts added = pairs.addJournal(journal, new Journal.DataOptions());
                line("dataset pairs=" + added.pairs() + " thumbs=" + added.thumbs());
                score("base", model, adapter);

                TrainOptions dpo = new TrainOptions().loss("sigmoid").learningRate(5e-3).beta(0.1).maxSteps(3)
                        .batchSize(2).seed(11).threads(THREADS);
                printResult(adapter.train(pairs, dpo, printSteps(0)));
                journal.markTrained(pairs);
                printStats("trained", journal);
                score("trained", model, adapter);

                added = thumbs.addJournal(journal, new Journal.DataOptions().onlyNew(false).thumbs(true));
                line("dataset pairs=" + added.pairs() + " thumbs=" + added.thumbs());
                TrainOptions kto = new TrainOptions().loss("kto").learningRate(5e-3).maxSteps(4).batchSize(2).seed(3)
                        .threads(THREADS);
                TrainResult stopped = adapter.train(thumbs, kto, printSteps(2));
                check(stopped.cancelled() && stopped.steps() == 2, "a run stopped by its listener is a result");
                printResult(stopped);
                score("final", model, adapter);
            }

            GenerateOptions go = new GenerateOptions().maxNewTokens(12);
            Streamed greedy = generate("greedy", model, adapter, go, 0);
            generate("base", model, null, go, 0);
            generate("stopped", model, adapter, go, 3);
            line("stop_string " + text("s", greedy.third));
            GenerateOptions atString = new GenerateOptions().maxNewTokens(12).stopStrings(greedy.third);
            generate("stop_string", model, adapter, atString, 0);
            generate("sampled", model, adapter, go.temperature(0.8f).topK(40).topP(0.9f).seed(5), 0);
            generateBatch(model, adapter);

            String peft = dir.resolve("peft").toString();
            adapter.savePeft(peft);
            try (Adapter loaded = Adapter.load(model, peft)) {
                score("loaded", model, loaded);
                Path gguf = dir.resolve("adapter.gguf");
                adapter.saveGguf(gguf.toString(), Adapter.Dtype.F16);
                line("saved gguf=" + bit(Files.isReadable(gguf)));

                try (Adapter copy = adapter.copy();
                        Adapter stacked = Adapter.stack(new Adapter[] {adapter, loaded}, new float[] {0.5f, 0.25f});
                        Adapter fresh = Adapter.create(model, shape)) {
                    score("copy", model, copy);
                    score("stacked", model, stacked);
                    Adapter.swap(copy, fresh);
                    score("swapped_copy", model, copy);
                    score("swapped_fresh", model, fresh);
                }
            }

            try (Session session = Session.create(model, adapter, "You are terse.")) {
                GenerateOptions so = new GenerateOptions().maxNewTokens(8);
                send(session, "first", "What is the capital of France?", so);
                send(session, "second", "And of Italy?", so);
                line(text("messages", session.messagesJson()));
                float[] logits = session.logits();
                int best = 0;
                for (int i = 1; i < logits.length; i++) {
                    best = logits[i] > logits[best] ? i : best;
                }
                line("logits n=" + logits.length + " first=" + g17(logits[0]) + " last=" + g17(logits[logits.length - 1])
                        + " argmax=" + best + " max=" + g17(logits[best]));
                session.rollback(1);
                session.add("user", "Say hello.");
                send(session, "regenerated", null, so);
                session.truncate(1);
                send(session, "after_truncate", "Hi!", so);
            }
        }
        line("live_handles_delta=" + (Nudge.liveHandles() - liveStart));
    }

    // ---- The binding's own promises -----------------------------------------------------

    interface Call {
        void run() throws Exception;
    }

    static <T extends Throwable> T expect(Class<T> type, String what, Call call) {
        try {
            call.run();
        } catch (Throwable t) {
            if (type.isInstance(t)) {
                System.out.println("  ok: " + what + " -> " + t.getClass().getSimpleName() + ": " + t.getMessage());
                return type.cast(t);
            }
            throw new AssertionError(what + ": expected " + type.getSimpleName() + ", got " + t, t);
        }
        throw new AssertionError(what + ": expected " + type.getSimpleName() + ", nothing was thrown");
    }

    static NudgeException expectStatus(int status, String what, Call call) {
        NudgeException e = expect(NudgeException.class, what, call);
        check(e.status() == status, what + ": status " + e.statusName() + " (" + e.status() + "), expected " + status);
        check(e.statusName().equals(Nudge.statusName(status)), what + ": status name " + e.statusName());
        check(e.getMessage().equals(e.statusName() + ": " + e.nativeMessage()), what + ": message");
        return e;
    }

    static void promises(String modelPath, Path dir) throws Exception {
        long liveStart = Nudge.liveHandles();
        check(Nudge.statusName(NudgeException.ERR_IO).equals("NUDGE_ERR_IO"), "status names");
        check(Nudge.versionNumber() >= 100, "version number");

        // A missing file: ERR_IO, and the message names it (beyond ASCII and the BMP both ways).
        String missing = dir.resolve("no-such-modèle-🙂.gguf").toString();
        NudgeException e = expectStatus(NudgeException.ERR_IO, "opening a missing model", () -> Model.open(missing));
        check(e.nativeMessage().contains(missing), "the message names the file: " + e.nativeMessage());
        Path garbage = dir.resolve("garbage.gguf");
        Files.write(garbage, "GGUF but not really".getBytes(StandardCharsets.UTF_8));
        expect(NudgeException.class, "opening a malformed model", () -> Model.open(garbage.toString()));

        try (Model model = Model.open(modelPath, new Model.Options().threads(THREADS));
                Adapter adapter = Adapter.create(model, new Adapter.Options().rank(4))) {
            GenerateOptions o = new GenerateOptions().maxNewTokens(8);
            String greedy = model.generate(adapter, GEN_PROMPT, o).text();

            // Bad input: typed exceptions that name what is wrong.
            expect(NullPointerException.class, "a null prompt", () -> model.generate(adapter, null, o));
            IllegalArgumentException iae = expect(IllegalArgumentException.class, "U+0000 in a prompt",
                    () -> model.generate(adapter, "a\u0000b", o));
            check(iae.getMessage().contains("prompt"), "names the prompt");
            expect(IllegalArgumentException.class, "an unpaired surrogate",
                    () -> model.tokenize("\ud83d", Format.TEXT));
            iae = expect(IllegalArgumentException.class, "a negative option",
                    () -> model.generate(adapter, GEN_PROMPT, new GenerateOptions().maxNewTokens(-1)));
            check(iae.getMessage().contains("GenerateOptions.maxNewTokens"), "names the option");
            expectStatus(NudgeException.ERR_INVALID, "100000 threads",
                    () -> model.generate(adapter, GEN_PROMPT, new GenerateOptions().threads(100000)));
            expectStatus(NudgeException.ERR_INVALID, "an empty prompt", () -> model.generate(adapter, "", o));
            e = expectStatus(NudgeException.ERR_INVALID, "a token id outside the vocabulary",
                    () -> model.detokenize(new int[] {-16}, false));
            check(e.nativeMessage().contains("outside the vocabulary"), "names the problem");
            expectStatus(NudgeException.ERR_INVALID, "rank 100000",
                    () -> Adapter.create(model, new Adapter.Options().rank(100000)));
            expectStatus(NudgeException.ERR_INVALID, "an unknown loss", () -> {
                try (Dataset d = new Dataset().addPair(PROMPTS[0], GOOD[0], BAD[0], Format.TEXT)) {
                    adapter.train(d, new TrainOptions().loss("no_such_loss"));
                }
            });
            expect(IllegalArgumentException.class, "weights that do not match the adapters",
                    () -> Adapter.stack(new Adapter[] {adapter}, new float[] {1f, 2f}));
            expectStatus(NudgeException.ERR_INVALID, "chat JSON that is not JSON",
                    () -> model.generate(adapter, "not json", Format.CHAT_JSON, o, null));

            // A journal file has one handle at a time.
            String path = dir.resolve("once.journal").toString();
            try (Journal j = Journal.open(path)) {
                j.addThumb("a", "x", "y", true);
                expect(NudgeException.class, "a second handle on one journal file", () -> Journal.open(path));
            }

            // Closed handles: closing twice is harmless; using one is IllegalStateException.
            Adapter closed = Adapter.create(model, new Adapter.Options());
            closed.close();
            closed.close();
            check(closed.isClosed(), "isClosed");
            expect(IllegalStateException.class, "a closed adapter", closed::info);
            expect(IllegalStateException.class, "a closed adapter as an argument",
                    () -> model.generate(closed, GEN_PROMPT, o));
            Model early = Model.open(modelPath);
            Adapter outlives = Adapter.create(early, new Adapter.Options().rank(2));
            early.close(); // the adapter keeps its model open
            check(outlives.info().rank() == 2, "an adapter outlives its model's handle");
            outlives.close();
            Dataset gone = new Dataset();
            gone.close();
            expect(IllegalStateException.class, "a closed dataset", () -> adapter.train(gone, new TrainOptions()));

            // A listener's exception stops the call and reaches the caller as it is; nothing
            // is left pending and the objects stay usable.
            RuntimeException boom = new RuntimeException("boom");
            check(expect(RuntimeException.class, "a token listener that throws", () -> model.generate(adapter,
                    GEN_PROMPT, Format.TEXT, o, (piece, id) -> { throw boom; })) == boom, "the same exception");
            check(model.generate(adapter, GEN_PROMPT, o).text().equals(greedy), "generation works after it");
            try (Dataset d = new Dataset()) {
                d.addPair(PROMPTS[0], GOOD[0], BAD[0], Format.TEXT).addPair(PROMPTS[1], GOOD[1], BAD[1], Format.TEXT);
                TrainOptions t = new TrainOptions().maxSteps(2).batchSize(1).threads(THREADS);
                check(expect(RuntimeException.class, "a progress listener that throws",
                        () -> adapter.train(d, t, m -> { throw boom; })) == boom, "the same exception");
                check(adapter.info().rank() == 4, "the adapter is not left busy");
                check(d.counts().pairs() == 2, "dataset counts");
            }
            check(expect(RuntimeException.class, "a batch listener that throws",
                    () -> model.generateBatch(adapter, new String[] {GEN_PROMPT, GEN_PROMPT}, Format.TEXT, 2, o, -1,
                            (prompt, sample, piece, id) -> { throw boom; })) == boom, "the same exception");
            Error error = new StackOverflowError("deep");
            check(expect(StackOverflowError.class, "a listener that throws an Error", () -> model.generate(adapter,
                    GEN_PROMPT, Format.TEXT, o, (piece, id) -> { throw error; })) == error, "the same error");

            // Stops: false from the listener ends the reply; interrupt() cancels it.
            Generation cut = model.generate(adapter, GEN_PROMPT, Format.TEXT, o, (piece, id) -> false);
            check(cut.stopReason() == Generation.StopReason.CALLBACK && greedy.startsWith(cut.text()), "stop");
            int[] calls = {0};
            expectStatus(NudgeException.ERR_CANCELLED, "interrupt() from the token listener",
                    () -> model.generate(adapter, GEN_PROMPT, Format.TEXT, o, (piece, id) -> {
                        if (++calls[0] == 3) {
                            model.interrupt();
                        }
                        return true;
                    }));
            check(model.generate(adapter, GEN_PROMPT, o).text().equals(greedy), "generation works after it");

            // Long calls (under -Xcheck:jni, which flags local references left past 32): a
            // reply of 100 streamed tokens, a run of 40 steps, a listing of 50 events.
            int[] pieces = {0};
            StringBuilder streamed = new StringBuilder();
            Generation longReply = model.generate(adapter, GEN_PROMPT, Format.TEXT,
                    new GenerateOptions().maxNewTokens(100), (piece, id) -> {
                        pieces[0]++;
                        streamed.append(piece);
                        return true;
                    });
            check(streamed.toString().equals(longReply.text())
                    && (pieces[0] >= 100 || longReply.stopReason() == Generation.StopReason.EOS), "a long streamed reply");
            try (Adapter scratch = Adapter.create(model, new Adapter.Options().rank(2));
                    Dataset d = new Dataset().addPair(PROMPTS[0], GOOD[0], BAD[0], Format.TEXT)) {
                List<StepMetrics> steps = new ArrayList<>();
                TrainResult r = scratch.train(d, new TrainOptions().maxSteps(40).batchSize(1).threads(THREADS),
                        steps::add);
                check(r.steps() == 40 && steps.size() == 40 && steps.get(39).step() == 40, "a run of 40 steps");
            }
            try (Journal j = Journal.open(dir.resolve("long.journal").toString(), Journal.Durability.BATCH)) {
                for (int i = 0; i < 50; i++) {
                    j.addThumb("e" + i, PROMPTS[i % PROMPTS.length] + " 🙂", GOOD[i % GOOD.length], i % 2 == 0);
                }
                j.sync();
                List<Journal.Event> events = j.events();
                check(events.size() == 50 && events.get(49).prompt().equals(PROMPTS[49 % PROMPTS.length] + " 🙂"),
                        "a listing of 50 events, text beyond the BMP intact");
            }
            System.out.println("  ok: " + pieces[0] + " streamed tokens, 40 steps, 50 events listed");

            // Several threads on one model and adapter at once.
            AtomicReference<Throwable> failed = new AtomicReference<>();
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < 4; i++) {
                Thread th = new Thread(() -> {
                    try {
                        for (int k = 0; k < 3; k++) {
                            check(model.generate(adapter, GEN_PROMPT, o).text().equals(greedy), "same reply");
                        }
                    } catch (Throwable t) {
                        failed.compareAndSet(null, t);
                    }
                });
                th.start();
                threads.add(th);
            }
            for (Thread th : threads) {
                th.join();
            }
            if (failed.get() != null) {
                throw new AssertionError("generation from 4 threads", failed.get());
            }
            System.out.println("  ok: 4 threads generating at once get the same reply");

            try (Session s = Session.create(model, null, null)) {
                expectStatus(NudgeException.ERR_INVALID, "rolling back a turn a session does not have",
                        () -> s.rollback(1));
                s.send("Hello", o, null);
                check(s.info().messages() == 2, "session messages");
            }
        }
        check(Nudge.liveHandles() == liveStart, "live handles back to " + liveStart + ": " + Nudge.liveHandles());
    }

    // ---- The comparison with the C reference ----------------------------------------------

    static List<String> runReference(String binary, String modelPath) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(binary, modelPath).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        byte[] out;
        try (InputStream in = p.getInputStream()) {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            in.transferTo(b);
            out = b.toByteArray();
        }
        int status = p.waitFor();
        if (status != 0) {
            throw new AssertionError("the C reference " + binary + " exited with " + status);
        }
        return Arrays.asList(new String(out, StandardCharsets.UTF_8).split("\n", -1)).subList(0,
                (int) new String(out, StandardCharsets.UTF_8).chars().filter(c -> c == '\n').count());
    }

    static void compare(List<String> java, List<String> c) {
        int mismatches = 0;
        for (int i = 0; i < Math.max(java.size(), c.size()); i++) {
            String j = i < java.size() ? java.get(i) : "(none)";
            String r = i < c.size() ? c.get(i) : "(none)";
            if (!j.equals(r)) {
                if (mismatches++ < 5) {
                    System.out.println("MISMATCH at line " + (i + 1) + ":\n  java: " + j + "\n  C:    " + r);
                }
            }
        }
        if (mismatches > 0) {
            throw new AssertionError(mismatches + " of " + c.size() + " lines differ from the C reference");
        }
    }

    static void deleteTree(Path dir) throws IOException {
        try (Stream<Path> paths = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) paths.sorted(Comparator.reverseOrder())::iterator) {
                Files.delete(p);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: BindingTest MODEL REFERENCE_BINARY");
            System.exit(2);
        }
        Path dir = Files.createTempDirectory("nudge-java-");
        int status = 0;
        try {
            long t0 = System.nanoTime();
            Nudge.load();
            System.out.println("== the personalization through the binding");
            sequence(args[0], Files.createDirectory(dir.resolve("run")));
            long t1 = System.nanoTime();
            System.out.println("== the binding's promises");
            promises(args[0], dir);
            long t2 = System.nanoTime();
            System.out.println("== the C reference: " + args[1]);
            List<String> c = runReference(args[1], args[0]);
            compare(lines, c);
            long t3 = System.nanoTime();
            System.out.printf("BindingTest: ok: %d lines identical to the C reference's; sequence %.2f s, promises"
                    + " %.2f s, reference %.2f s%n", c.size(), (t1 - t0) / 1e9, (t2 - t1) / 1e9, (t3 - t2) / 1e9);
        } catch (Throwable t) {
            System.out.println("BindingTest: FAILED: " + t);
            t.printStackTrace(System.out);
            status = 1;
        } finally {
            deleteTree(dir);
        }
        System.exit(status);
    }
}
