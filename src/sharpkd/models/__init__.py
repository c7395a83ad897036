"""Networks. ``ARCHS`` maps a checkpoint's ``arch`` field to its config and module classes."""

from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig
from sharpkd.models.kstudent import KernelStudent, KernelStudentConfig
from sharpkd.models.student import Student, StudentConfig
from sharpkd.models.teacher import NAFTeacher, NAFTeacherConfig, ResNetTeacher, ResNetTeacherConfig

WIENER_SIGMAS = (0.7, 1.0, 1.4, 2.0, 2.8, 3.6)

ARCHS = {
    "resnet": (ResNetTeacherConfig, ResNetTeacher),
    "nafunet": (NAFTeacherConfig, NAFTeacher),
    "student": (StudentConfig, Student),
    "blind": (BlindTeacherConfig, BlindTeacher),  # teacher v2: kernel estimate + HQS with FFDNet
    # the student with a Wiener step on the teacher's per-photo kernel estimate (sharpkd.models.kstudent)
    "kstudent": (KernelStudentConfig, KernelStudent),
}

# Named presets a user can pass to ``--arch``.
PRESETS = {
    "resnet8": ("resnet", ResNetTeacherConfig()),
    "nafunet": ("nafunet", NAFTeacherConfig()),
    "nafunet-s": ("nafunet", NAFTeacherConfig(width=16)),
    # the student's plain-convolution design, scaled up: a teacher candidate that trains fast on CPUs
    "convunet": ("student", StudentConfig(unshuffle=2, width=64, low_width=128, low_blocks=6, high_blocks=2)),
    "student": ("student", StudentConfig()),
    # with a bank of Wiener deconvolutions (Gaussian widths below) next to the input
    "nafunet-w": ("nafunet", NAFTeacherConfig(wiener=WIENER_SIGMAS)),
    "student-w": ("student", StudentConfig(wiener=WIENER_SIGMAS)),
    # cheaper students for the speed goals: everything at 1/4 and 1/8 of the input resolution
    "student-x4": ("student", StudentConfig(unshuffle=4, width=32, low_width=56, low_blocks=1)),
    "student-x4d": ("student", StudentConfig(unshuffle=4, width=32, low_width=32, low_blocks=3)),
    "student-n": ("student", StudentConfig(unshuffle=2, width=24, low_width=48)),
    # the real-time student: the student's layout, half its width at 1/2 resolution (102k weights, 8,736 MACs/px)
    "student-s": ("student", StudentConfig(unshuffle=2, width=16, low_width=48)),
    # student-s with one bottleneck block instead of two (60,588 weights, 6,144 MACs/px): for CPUs without AVX-512
    "student-s1": ("student", StudentConfig(unshuffle=2, width=16, low_width=48, low_blocks=1)),
    # student-x4 trained with re-parameterisable convolutions (collapsed to student-x4 for inference)
    "student-x4r": ("student", StudentConfig(unshuffle=4, width=32, low_width=56, low_blocks=1, rep=2)),
}

__all__ = ["ARCHS", "BlindTeacher", "BlindTeacherConfig", "KernelStudent", "KernelStudentConfig", "PRESETS",
           "NAFTeacher", "NAFTeacherConfig", "ResNetTeacher", "ResNetTeacherConfig", "Student", "StudentConfig"]
