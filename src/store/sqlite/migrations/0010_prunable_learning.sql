-- Retention keeps learning events (`lesson.completed`, `quiz.attempted`)
-- whole, like enrollment events: the projection is derived from them.
DROP INDEX events_prunable;
CREATE INDEX events_prunable ON events (received_at)
    WHERE enrollment_id IS NULL AND pruned_at IS NULL
      AND topic NOT IN ('lesson.completed', 'quiz.attempted');
