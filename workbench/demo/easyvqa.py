"""easy-VQA images and questions, and scenes of 2-4 of them, for the ``effnet-smollm2-vqa`` preset.

easy-VQA (package ``easy-vqa``, MIT; https://github.com/vzhou842/easy-VQA) ships 4,000 train and
1,000 test 64 x 64 RGB images, each holding one shape (circle, rectangle, triangle) of one of 8
colours, with 38,575 / 9,673 templated questions ("does the image contain a circle?", "is there
not a red shape?", "what color is the shape?"); about 74% are yes/no. Nothing is downloaded: the
images and questions are files inside the wheel.

An image's content (shape, colour) is not stored by the package; :func:`image_labels` reads it
from the image's own open questions and answers ("what shape is in the image?" -> circle) and
checks it against every yes/no question of the image.

**Scenes.** An easy-VQA image holds one object, so object hallucination needs several: a scene is
a 2 x 2 grid of 64 x 64 cells (128 x 128 px) holding 2-4 easy-VQA images of one split in random
cells (empty cells white). Objects are drawn with a skewed class frequency (:func:`popularity`)
and a partner structure (:func:`partners`: each class has a partner that follows it with
probability :data:`P_PARTNER`), so that POPE's popular and adversarial negatives (Li et al. 2023)
mean something: popular = the absent object most frequent in the train scenes, adversarial = the
absent object that co-occurs most with the present ones in the train scenes. Train scenes use train
images, test scenes use test images. The caption lists the objects in reading order (row by row):
``a red circle, a blue triangle and a gray rectangle``.

Pixels: tower input (3, 224, 224) float32 normalised as (x - 0.5) / 0.5 (EfficientNet-Lite's
convention), bilinear resize from 64 px (single images) or 128 px (scenes).

Modules: :mod:`.easyvqa_data` (the images and questions) and :mod:`.easyvqa_scenes` (scenes, captions, POPE
items); every name stays importable from here.
"""
from __future__ import annotations

from .easyvqa_data import (CLASSES, COLORS, IMAGE_SIZE, NO, SHAPES, YES, MissingDatasetError, blank_pixels,
                           image_array, image_labels, image_paths, image_pixels, is_yesno, questions, to_pixels)
from .easyvqa_scenes import (ALL_OBJECTS, CAPTION_QUESTION, CELL, GRID, P_PARTNER, POPE_QUESTION, Scene, draw_classes,
                             make_scene, mentioned_objects, object_name, partners, pope_items, popularity,
                             scene_objects, scene_questions, scenes, training_stats)

__all__ = [
    "ALL_OBJECTS", "CAPTION_QUESTION", "CELL", "CLASSES", "COLORS", "GRID", "IMAGE_SIZE", "NO", "POPE_QUESTION",
    "P_PARTNER", "SHAPES", "YES", "MissingDatasetError", "Scene", "blank_pixels", "draw_classes", "image_array",
    "image_labels", "image_paths", "image_pixels", "is_yesno", "make_scene", "mentioned_objects", "object_name",
    "partners", "pope_items", "popularity", "questions", "scene_objects", "scene_questions", "scenes", "to_pixels",
    "training_stats",
]
